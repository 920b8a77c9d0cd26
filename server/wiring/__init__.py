"""The parts of the composition root that :func:`server.app.create_app` assembles.

Only :mod:`server.app` imports these; nothing in ``signaling/`` or ``media/``
imports them (``make lint`` checks it).
"""
