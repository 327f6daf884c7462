"""The halt's audit chain: records, the HMAC key, sealing and verification.

Each record is chained to the one before it: ``mac`` = HMAC-SHA256(key, a domain tag + the
canonical JSON of every other field, ``prev`` = the previous record's MAC and ``seq`` = its
index included). So a record edited by hand, removed, reordered, inserted or forged without
the key fails :func:`verify`, which names the first record that fails. The key is the bot's
secret and never appears in a message. Used by :mod:`exitguard.halt`; stores never see keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HaltStoreError

#: The environment variable naming a file that holds the halt's HMAC key (preferred).
ENV_KEY_FILE = "EXITGUARD_HALT_KEY_FILE"
#: The environment variable holding the halt's HMAC key itself.
ENV_KEY = "EXITGUARD_HALT_KEY"
#: A key shorter than this many bytes is refused (32 random bytes, hex-encoded, recommended).
MIN_KEY_BYTES = 16

#: What the MAC covers besides the record, so a MAC of another exitguard format never fits.
_MAC_DOMAIN = b"exitguard-halt-record-v2\n"


@dataclass(frozen=True, slots=True)
class HaltRecord:
    """One audit entry: a halt (actor = what halted it; ``approvers`` = who may lift it) or a
    resume (actor = the approver). ``os_user`` is the OS account of the process that wrote it."""

    halted: bool
    reason: str
    actor: str
    at: float
    approvers: tuple[str, ...] = ()
    os_user: str = ""


#: A stored record: a JSON object. Stores keep them as they are and never interpret them.
StoredRecord = dict[str, Any]


# --- the key ----------------------------------------------------------------------------------


def load_key(key: bytes | str | None = None,
             key_file: str | os.PathLike[str] | None = None) -> bytes | None:
    """The halt's HMAC key: ``key``, else the content of ``key_file``, else of the file named
    by ``$EXITGUARD_HALT_KEY_FILE``, else ``$EXITGUARD_HALT_KEY``; None if none is set.

    Surrounding whitespace (a trailing newline) is not part of the key. Errors never show it.
    """
    source = "key"
    if key is None and key_file is None:
        env_file = os.environ.get(ENV_KEY_FILE)
        if env_file:
            key_file, source = env_file, f"${ENV_KEY_FILE}"
        elif os.environ.get(ENV_KEY):
            key, source = os.environ[ENV_KEY], f"${ENV_KEY}"
        else:
            return None
    if key is None and key_file is not None:
        source = source if source != "key" else "key_file"
        try:
            key = Path(key_file).read_bytes()
        except OSError as exc:
            raise ValueError(f"halt {source}: cannot read the key file {str(key_file)!r}:"
                             f" {exc.strerror or exc}") from None
    assert key is not None
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    raw = raw.strip()
    if len(raw) < MIN_KEY_BYTES:
        raise ValueError(f"halt {source}: the key is shorter than {MIN_KEY_BYTES} bytes; make"
                         " one with: python3 -c 'import secrets; print(secrets.token_hex(32))'")
    return raw


def os_user() -> str:
    """The OS account running this process (from the effective uid, not from $USER, which
    anyone can set); ``root (sudo from bob)`` when run through sudo."""
    uid = os.geteuid()
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        name = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo from {sudo})" if uid == 0 and sudo else name


class HaltTampered(HaltStoreError):
    """The stored records fail verification: a MAC, a link or a sequence number is wrong."""


def _body(record: HaltRecord, seq: int, prev: str) -> StoredRecord:
    return {"seq": seq, "prev": prev, "halted": record.halted, "reason": record.reason,
            "actor": record.actor, "at": record.at, "approvers": list(record.approvers),
            "os_user": record.os_user}


def _mac(key: bytes, body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, _MAC_DOMAIN + canonical.encode("ascii"), hashlib.sha256).hexdigest()


def seal(key: bytes, records: Iterable[HaltRecord], *, seq: int = 0,
         prev: str = "") -> list[StoredRecord]:
    """``records`` as stored records, chained after the record of MAC ``prev`` (``seq`` is the
    index of the first one in the list)."""
    out: list[StoredRecord] = []
    for record in records:
        body = _body(record, seq, prev)
        prev = _mac(key, body)
        out.append({**body, "mac": prev})
        seq += 1
    return out


def _field(raw: Mapping[str, Any], name: str, kind: type[Any]) -> Any:
    value = raw[name]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TypeError(f"{name} is not a {kind.__name__}")
    return value


def verify(key: bytes, stored: Sequence[Mapping[str, Any]], *, seq: int = 0,
           prev: str = "") -> tuple[list[HaltRecord], list[str]]:
    """The records and their MACs, after checking each record's MAC, sequence number and link
    to the one before; :class:`HaltTampered` names the first record that fails. ``seq`` and
    ``prev`` continue a chain already verified up to the record of index ``seq - 1``, MAC
    ``prev``."""
    records: list[HaltRecord] = []
    macs: list[str] = []
    for index, raw in enumerate(stored, start=seq):
        record, prev = _verify_one(key, index, prev, raw)
        records.append(record)
        macs.append(prev)
    return records, macs


def _verify_one(key: bytes, index: int, prev: str,
                raw: Mapping[str, Any]) -> tuple[HaltRecord, str]:
    """Record ``index`` and its MAC, checked against ``key`` and the previous MAC ``prev``."""
    try:
        body = {k: v for k, v in raw.items() if k != "mac"}
        mac = _field(raw, "mac", str)
        at = raw["at"]
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise TypeError("at is not a finite number")
        approvers = _field(raw, "approvers", list)
        if not all(isinstance(a, str) for a in approvers):
            raise TypeError("approvers is not a list of names")
        record = HaltRecord(_field(raw, "halted", bool), _field(raw, "reason", str),
                            _field(raw, "actor", str), float(at), tuple(approvers),
                            _field(raw, "os_user", str))
        seq, link = _field(raw, "seq", int), _field(raw, "prev", str)
    except (KeyError, TypeError, AttributeError) as exc:
        raise HaltTampered(f"record {index} is malformed ({exc})") from None
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise HaltTampered(f"record {index} fails its MAC (edited by hand, or another key)")
    if seq != index or link != prev or set(body) != set(_body(record, seq, link)):
        raise HaltTampered(f"record {index} is out of its chain (records removed,"
                           " reordered or inserted)")
    return record, mac


class ChainVerifier:
    """:func:`verify` for one key that remembers the history it last verified, so a reload
    that only appended records verifies just the new ones (a halt's history grows forever;
    verifying all of it at every load made propagation slower with every halt).

    The shortcut is taken only when the stored records up to the remembered count are equal,
    field for field, to the ones verified before (the MAC at the last of them included, which
    commits to every earlier record); anything else (fewer records, an edited or rewritten
    prefix) is verified in full, as :func:`verify` does. The remembered records are the
    stores' own copies: an in-process store whose records are mutated in place is not
    defended against (a file or Redis store hands out fresh ones at every read).
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._stored: list[Mapping[str, Any]] = []
        self._records: list[HaltRecord] = []
        self._macs: list[str] = []

    def __call__(self, stored: Sequence[Mapping[str, Any]]) -> tuple[list[HaltRecord], list[str]]:
        known = len(self._stored)
        if (known and len(stored) >= known and list(stored[:known]) == self._stored
                and stored[known - 1]["mac"] == self._macs[-1]):  # equal records: both dicts
            new_records, new_macs = verify(self._key, stored[known:], seq=known,
                                           prev=self._macs[-1])
            records, macs = [*self._records, *new_records], [*self._macs, *new_macs]
        else:
            records, macs = verify(self._key, stored)
        self._stored, self._records, self._macs = list(stored), records, macs
        return list(records), list(macs)
