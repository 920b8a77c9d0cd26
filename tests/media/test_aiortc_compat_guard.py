"""Start-up guards of the private aiortc names: pass on the pinned aiortc, fail loudly otherwise."""

from __future__ import annotations

import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender

import media.aiortc_compat as compat
import media.loadtest.aiortc_compat as loadtest_compat


def test_both_guards_pass_on_the_installed_aiortc() -> None:
    compat.check_aiortc()
    loadtest_compat.check_loadtest_aiortc()
    assert compat.missing_names(compat._REQUIRED) == []
    assert compat.missing_names(loadtest_compat._REQUIRED) == []


def test_a_missing_name_is_named_and_fails_loudly() -> None:
    missing = compat.missing_names(
        [
            (RTCRtpSender, "attr", "_no_such_method"),
            (RTCRtpReceiver, "code:__init__", "_RTCRtpReceiver__no_such_field"),
            (RTCRtpReceiver, "code:no_such_function", "_track"),
            (RTCRtpSender, "code:__init__", "_stream_id"),  # present
        ]
    )
    assert missing == [
        "aiortc.rtcrtpsender.RTCRtpSender._no_such_method",
        "aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__ uses _RTCRtpReceiver__no_such_field",
        "aiortc.rtcrtpreceiver.RTCRtpReceiver.no_such_function uses _track",
    ]
    with pytest.raises(RuntimeError, match=r"media\.loadtest: .*missing .*_no_such_method"):
        compat.fail_if([f"missing {missing[0]}"], "media.loadtest: the load tester")
    compat.fail_if([], "nobody")  # nothing missing: no error
