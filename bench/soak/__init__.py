"""The soak: a real ``huddle serve`` under steady lifecycle and media load, watched for growth.

``python -m bench.soak.run`` (``make soak``); the suite's bounded form is
``tests/reliability/test_soak.py``. See docs/reliability.md.
"""
