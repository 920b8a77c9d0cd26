"""The ids the signaling protocol keeps for the server side (docs/protocol.md).

``sender_id`` of what the server itself originates, and ``sender_id`` /
``target_id`` of the SFU. No user may hold one: it could pass for the server
or the SFU in relayed messages, so tokens, member lists and callee lists
refuse them (:func:`server.auth.is_reserved_user_id`).
"""

from __future__ import annotations

#: ``target_id`` of messages for the SFU, and ``sender_id`` of the SFU's.
SFU_ID = "sfu"
#: ``sender_id`` of messages the server itself originates (lifecycle, roster, errors).
SERVER_ID = "server"
#: Ids no user may have (compared case-insensitively).
RESERVED_USER_IDS = frozenset({SFU_ID, SERVER_ID})
