"""Build hook for the one C extension; everything else is in pyproject.toml.

``media._udpsend`` (in-place SRTP + UDP GSO sends for the SFU's fan-out) is
optional: where it cannot be compiled the SFU uses the pure-Python path in
``media/udpout.py``, which does the same, slower. ``make test`` (CI) checks
that it was built.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "media._udpsend",
            sources=[
                "media/_udpsend.c",
                "media/_fanout.c",
                "media/_rtpparse.c",
                "media/_receive.c",
                "media/_sendlog.c",
                "media/_pacer.c",
            ],
            depends=["media/_udpsend.h"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
