"""Was a stream entry removed before a consumer group read it? (case C16)

Entries leave a stream two ways, and the server records them differently (checked on Redis 7.0
and Valkey 9.1):

* ``XDEL`` raises ``max-deleted-entry-id`` (XINFO STREAM).
* ``XTRIM``/``XADD MAXLEN|MINID`` do **not** touch ``max-deleted-entry-id``; they only move the
  first entry, while ``entries-added`` keeps counting every entry ever added.

So comparing ``max-deleted-entry-id`` with a group's ``last-delivered-id`` catches deletions
only. Trimmed entries all lie before the first retained entry; some of them were unread when the
group's ``last-delivered-id`` is before that entry and its logical read position
(``entries-read``: how many entries ever added are at or before its last-delivered-id) is below
the number of removed entries (``entries-added - length``).
"""

from __future__ import annotations

from typing import Any

from streamcore.ids import compare


def removed_before_delivery(stream_info: dict[str, Any], last_delivered_id: str, entries_read: int | None) -> bool:
    """Whether entries were deleted or trimmed before a group read them.

    Args:
        stream_info: redis-py's parsed ``XINFO STREAM`` reply (``length``, ``entries-added``,
            ``max-deleted-entry-id``, ``first-entry`` as ``(id, fields)`` or None,
            ``last-generated-id``).
        last_delivered_id: the group's ``last-delivered-id`` (XINFO GROUPS).
        entries_read: the group's ``entries-read`` (XINFO GROUPS); None when the server cannot
            tell, in which case a group behind the first retained entry of a stream that lost
            entries is reported (it may be a false alarm when only read entries went).

    Returns:
        True when at least one removed entry was after the group's last-delivered-id.
    """
    max_deleted = stream_info.get("max-deleted-entry-id")
    if max_deleted and compare(max_deleted, last_delivered_id) > 0:
        return True
    added = stream_info.get("entries-added")
    if added is None:
        return False
    removed = int(added) - int(stream_info.get("length") or 0)
    if removed <= 0:
        return False
    first = stream_info.get("first-entry")
    # With entries left, the boundary is the first one; with none, the last ID ever generated.
    boundary = first[0] if first and first[0] is not None else stream_info.get("last-generated-id")
    if not boundary or compare(last_delivered_id, boundary) >= 0:
        return False
    return entries_read is None or entries_read < removed
