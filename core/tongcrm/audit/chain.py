"""The audit log's hash chain: how records are chained on append, and how the chain is verified.

Every audit record stores ``prev_hash`` (its predecessor's hash) and ``hash``, the SHA-256 of a canonical
encoding of its own fields plus ``prev_hash``. The record's content (``before``/``after``, which may hold
personal data) is not in that encoding: ``content_digest`` is, a SHA-256 over a random per-record
``content_salt`` and the canonical content. So the content can be *redacted* (PIPL erasure,
:func:`tongcrm.audit.service.redact`: ``before``, ``after`` and the salt removed, ``redacted_at`` set, and a
``audit.redact`` record appended naming the redacted records) and the chain still proves the order, the count
and the non-personal fields (actor, action, object, time) of every record. The salt is why the digest left
behind does not give the content away: without it, the digest of a short value such as a name could be found
by hashing candidate names; with it gone, there is nothing to test a guess against.

Services keep calling :func:`tongcrm.audit.service.record` without knowing about the chain: a record is staged
on the session (:func:`stage`) and joins the session only when the unit of work commits, after everything else
was flushed; its ``seq`` (1, 2, 3… with no gaps), salt, digest and hashes are then set in a ``before_flush``
listener after locking the single :class:`AuditChainHead` row. Concurrent transactions queue on the head instead
of chaining onto the same predecessor, and each holds it only for its final insert and commit, never while the
rest of its work runs (a long unit of work that audits early does not stall every other audited change, and
cannot deadlock against them over rows it locks later). A record staged inside a savepoint that rolls back is
dropped with it.

:func:`verify` recomputes every hash in ``seq`` order and compares the end of the chain with the head, so it
tells an edited record (its hash no longer matches), a removed one (a gap in ``seq``, or the head ahead of the
last record), and an inserted one (beyond the head, or a link that does not follow its predecessor). Content
is checked too: an unredacted record's content must match its digest (an edited ``before``/``after`` is an
edit); a redacted record must carry no content and no salt (a record marked redacted that still has them was
marked behind the application's back: the mark is not covered by the hash, so it proves nothing) and must be
named by a later ``audit.redact`` record (content removed without one was removed behind the application's
back: finding ``redacted``). A hash chain without a secret cannot stop someone who rewrites the whole chain and
the head: operators who need that keep the head hash :func:`verify` reports somewhere else and compare.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction

from tongcrm.audit.models import AuditChainHead, AuditEntry
from tongcrm.db.dialect import insert_for

#: ``prev_hash`` of the first record.
GENESIS = "0" * 64
#: Bumped if the canonical encoding ever changes (it is part of what is hashed). 2: content as a salted digest.
ENCODING_VERSION = 2
HEAD_ID = 1
#: The action of the record a redaction appends; its ``after`` is ``{"records": [seq, …], "reason": …}``. Such
#: records hold no personal data and are never redacted themselves (they are the proof the others were).
REDACT_ACTION = "audit.redact"

_head = cast(sa.Table, AuditChainHead.__table__)


def json_ready(value: Any) -> Any:
    """``value`` as the JSON column gives it back, so the hash computed on append is the one recomputed on
    read (tuples become lists, keys become strings)."""
    if value is None:
        return None
    return json.loads(json.dumps(value))


def new_salt() -> str:
    """A fresh per-record salt: 16 random bytes, hex."""
    return secrets.token_hex(16)


def content_digest(salt: str, before: Any, after: Any) -> str:
    """SHA-256 (hex) over the salt and the content, canonically encoded (a JSON array, sorted keys, no
    whitespace, UTF-8). ``before``/``after`` must be as the JSON column gives them back (:func:`json_ready`)."""
    encoded = json.dumps(
        [ENCODING_VERSION, salt, before, after], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(encoded.encode()).hexdigest()


def canonical(
    *,
    seq: int,
    at: datetime,
    actor: str,
    actor_key_id: int | None,
    role: str,
    action: str,
    object_type: str,
    object_id: str,
    content_digest: str,
    request_id: str | None,
    prev_hash: str,
) -> bytes:
    """The bytes that are hashed: a JSON array (fixed field order, no whitespace, UTF-8), with the time as UTC
    to the microsecond, as both databases store it, and the content only as its digest."""
    fields = [
        ENCODING_VERSION,
        seq,
        at.astimezone(UTC).isoformat(timespec="microseconds"),
        actor,
        actor_key_id,
        role,
        action,
        object_type,
        object_id,
        content_digest,
        request_id,
        prev_hash,
    ]
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(row: Any) -> str:
    """The hash of an :class:`AuditEntry` (or a row with the same attribute names)."""
    return hashlib.sha256(
        canonical(
            seq=int(row.seq),
            at=row.at,
            actor=row.actor,
            actor_key_id=row.actor_key_id,
            role=row.role,
            action=row.action,
            object_type=row.object_type,
            object_id=row.object_id,
            content_digest=row.content_digest,
            request_id=row.request_id,
            prev_hash=row.prev_hash,
        )
    ).hexdigest()


# -------------------------------------------------------------------------------------------------------------
# appending

_STAGED = "tongcrm.audit.staged"


def stage(session: AsyncSession, entry: AuditEntry) -> None:
    """Keep ``entry`` for the commit of the session's unit of work, remembering the (nested) transaction it
    was recorded in so a savepoint rollback can drop it."""
    sync = session.sync_session
    transaction = sync.get_nested_transaction() or sync.get_transaction()
    sync.info.setdefault(_STAGED, []).append((entry, transaction))


def has_staged(session: Session) -> bool:
    """Whether records wait in ``session`` for its unit of work's commit (which must then go through the
    session: its ``before_commit`` chains them)."""
    return bool(session.info.get(_STAGED))


def _within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    staged = session.info.get(_STAGED)
    if not staged:
        return
    if previous_transaction.parent is None:
        session.info.pop(_STAGED, None)
        return
    session.info[_STAGED] = [(e, t) for e, t in staged if t is None or not _within(t, previous_transaction)]


@event.listens_for(Session, "after_transaction_end")
def _forget_at_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the unit of work is over, committed or not
        session.info.pop(_STAGED, None)


@event.listens_for(Session, "before_commit")
def _append_staged(session: Session) -> None:
    """At the commit of the unit of work (not of a savepoint): flush everything else first, then add the staged
    records, which the commit's own flush chains (so the head is locked for that insert and the commit only)."""
    if session.in_nested_transaction():
        return
    staged = session.info.pop(_STAGED, None)
    if not staged:
        return
    session.flush()
    session.add_all([entry for entry, _ in staged])


def _lock_head(session: Session) -> tuple[int, str]:
    """Lock the chain head for the rest of the transaction and return ``(seq, hash)``; create it when the
    table is empty (a database built from the models, or emptied by tests)."""
    select = sa.select(_head.c.seq, _head.c.hash).where(_head.c.id == HEAD_ID).with_for_update()
    row = session.execute(select).first()
    if row is None:
        dialect = session.get_bind().dialect.name
        session.execute(
            insert_for(dialect, _head).values(id=HEAD_ID, seq=0, hash=GENESIS).on_conflict_do_nothing()
        )
        row = session.execute(select).one()
    return int(row.seq), str(row.hash)


@event.listens_for(Session, "before_flush")
def _chain_new_records(session: Session, _context: UOWTransaction, _instances: object) -> None:
    """Give the audit records about to be inserted their ``seq``, salt, content digest, ``prev_hash`` and
    ``hash``, in the order they were added, and move the head on — in the same transaction, so a rollback undoes
    both."""
    pending = [obj for obj in session.new if isinstance(obj, AuditEntry)]
    if not pending:
        return
    pending.sort(key=lambda obj: sa.inspect(obj).insert_order or 0)
    seq, prev = _lock_head(session)
    for entry in pending:
        seq += 1
        entry.seq = seq
        entry.prev_hash = prev
        entry.before = json_ready(entry.before)
        entry.after = json_ready(entry.after)
        entry.content_salt = new_salt()
        entry.content_digest = content_digest(entry.content_salt, entry.before, entry.after)
        entry.hash = record_hash(entry)
        prev = entry.hash
    session.execute(sa.update(_head).where(_head.c.id == HEAD_ID).values(seq=seq, hash=prev))


# -------------------------------------------------------------------------------------------------------------
# verifying


@dataclass(frozen=True, slots=True)
class Finding:
    """One break in the chain. ``kind``: ``edited``, ``removed``, ``inserted``, ``redacted`` (content removed
    with no ``audit.redact`` record naming it) or ``head``."""

    kind: str
    detail: str
    seq: int | None = None
    record_id: int | None = None


@dataclass(slots=True)
class ChainReport:
    records: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


_COLUMNS = (
    AuditEntry.id,
    AuditEntry.seq,
    AuditEntry.at,
    AuditEntry.actor,
    AuditEntry.actor_key_id,
    AuditEntry.role,
    AuditEntry.action,
    AuditEntry.object_type,
    AuditEntry.object_id,
    AuditEntry.before,
    AuditEntry.after,
    AuditEntry.content_digest,
    AuditEntry.content_salt,
    AuditEntry.redacted_at,
    AuditEntry.request_id,
    AuditEntry.prev_hash,
    AuditEntry.hash,
)


async def _read_head(session: AsyncSession) -> tuple[int, str] | None:
    row = (await session.execute(sa.select(_head.c.seq, _head.c.hash).where(_head.c.id == HEAD_ID))).first()
    return (int(row.seq), str(row.hash)) if row is not None else None


async def verify(session: AsyncSession, *, batch: int = 2000) -> ChainReport:
    """Walk the whole chain in ``seq`` order and report every break, without locking out appends.

    Records appended while the walk runs are walked too: the head is read again after the last page, and
    the walk goes on until it has reached the head it read, so only records beyond a head that was read after
    them count as inserted.
    """
    report = ChainReport()
    last_seq = 0
    last_hash = GENESIS
    last_id: int | None = None
    walked: list[tuple[int, int]] = []  # (seq, id) of records seen beyond the first head read, for the end
    unexplained: dict[int, int] = {}  # seq -> id of redacted records no audit.redact record has named yet
    first_head = await _read_head(session)
    while True:
        rows = (
            await session.execute(
                sa.select(*_COLUMNS).where(AuditEntry.seq > last_seq).order_by(AuditEntry.seq).limit(batch)
            )
        ).all()
        if rows:
            for row in rows:
                report.records += 1
                _check(report, row, last_seq, last_hash, last_id)
                _check_content(report, row, unexplained)
                if first_head is None or row.seq > first_head[0]:
                    walked.append((int(row.seq), int(row.id)))
                last_seq, last_hash, last_id = int(row.seq), str(row.hash), int(row.id)
            continue
        head = await _read_head(session)
        if head is not None and head[0] > last_seq and head != first_head:
            first_head = head  # appends committed meanwhile: walk on to them
            continue
        break
    # a redaction commits its records' new state with the record naming them, so a walk that saw the one sees
    # the other (it comes later in the chain, and the walk goes on to the head it read after seeing the first)
    for seq, record_id in sorted(unexplained.items()):
        report.findings.append(
            Finding(
                "redacted",
                f"record {record_id} (seq {seq}) had its content removed, but no {REDACT_ACTION} record names "
                "it: it was redacted behind the application's back",
                seq,
                record_id,
            )
        )
    if head is None:
        if report.records:
            report.findings.append(Finding("head", "the chain head row is missing: it was deleted"))
        return report
    report.head_seq, report.head_hash = head
    for seq, record_id in walked:
        if seq > head[0]:
            report.findings.append(
                Finding(
                    "inserted",
                    f"record {record_id} (seq {seq}) lies beyond the chain head (seq {head[0]}): "
                    "it was inserted behind the application's back",
                    seq,
                    record_id,
                )
            )
    if last_seq < head[0]:
        first = last_seq + 1
        what = f"seq {first}" if first == head[0] else f"seq {first} to {head[0]}"
        report.findings.append(
            Finding(
                "removed",
                f"the newest record(s) ({what}) were removed: the chain head says seq {head[0]}",
                first,
            )
        )
    elif last_seq == head[0] and last_hash != head[1]:
        report.findings.append(
            Finding(
                "edited",
                f"record {last_id} (seq {last_seq}) is not the record the chain head names (hash differs): "
                "it was replaced",
                last_seq,
                last_id,
            )
        )
    return report


def _check(report: ChainReport, row: Any, last_seq: int, last_hash: str, last_id: int | None) -> None:
    """Check one record against its own hash and against its predecessor."""
    seq, record_id = int(row.seq), int(row.id)
    if record_hash(row) != row.hash:
        report.findings.append(
            Finding(
                "edited",
                f"record {record_id} (seq {seq}, {row.action} on {row.object_type} {row.object_id}) was edited: "
                "its fields no longer match its hash",
                seq,
                record_id,
            )
        )
    if seq > last_seq + 1:
        first, last = last_seq + 1, seq - 1
        what = f"seq {first}" if first == last else f"seq {first} to {last}"
        after = f"after record {last_id}" if last_id is not None else "at the start"
        report.findings.append(
            Finding("removed", f"record(s) {what} were removed ({after}, before record {record_id})", first)
        )
    elif row.prev_hash != last_hash:
        previous = f"record {last_id} (seq {last_seq})" if last_id is not None else "the start of the chain"
        report.findings.append(
            Finding(
                "inserted",
                f"record {record_id} (seq {seq}) does not follow {previous}: it was inserted, or its predecessor "
                "was rewritten",
                seq,
                record_id,
            )
        )


def _check_content(report: ChainReport, row: Any, unexplained: dict[int, int]) -> None:
    """Check one record's content against its digest, or, if redacted, that it was redacted by the application:
    no content and no salt left, and (checked at the end of the walk) named by a later ``audit.redact`` record,
    whose own content names the records it redacted."""
    seq, record_id = int(row.seq), int(row.id)
    where = f"record {record_id} (seq {seq}, {row.action} on {row.object_type} {row.object_id})"
    if row.redacted_at is not None:
        if row.before is not None or row.after is not None or row.content_salt is not None:
            report.findings.append(
                Finding(
                    "edited",
                    f"{where} is marked redacted but still carries its content: the mark was set behind the "
                    "application's back",
                    seq,
                    record_id,
                )
            )
        else:
            unexplained[seq] = record_id
        return
    if (
        row.content_salt is None
        or content_digest(row.content_salt, row.before, row.after) != row.content_digest
    ):
        report.findings.append(
            Finding(
                "edited",
                f"{where} was edited: its content (before/after) no longer matches its digest",
                seq,
                record_id,
            )
        )
        return
    if row.action == REDACT_ACTION and isinstance(row.after, dict):
        for named in row.after.get("records") or ():
            if isinstance(named, int):
                unexplained.pop(named, None)
