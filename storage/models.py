"""Database tables: respondents and their addresses, rounds and invitations, submissions,
answers, inbound log, outbox, event log."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Respondent(Base):
    """A person; holds the conversation state as a JSON value.

    `channel`/`channel_user_id` are the address the person first came from; every address
    they answer from (the first included) is a row of `addresses`. An invited person also
    has the contact details of their invitation.
    """

    __tablename__ = "respondents"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))
    channel_user_id: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str | None] = mapped_column(String(8))
    state: Mapped[dict] = mapped_column(JSON)
    submission_id: Mapped[int | None] = mapped_column(BigId)
    unreachable: Mapped[bool] = mapped_column(Boolean, default=False)
    email: Mapped[str | None] = mapped_column(String(320))  # contact address, normalized
    name: Mapped[str | None] = mapped_column(String(200))
    organization: Mapped[str | None] = mapped_column(String(300))
    country: Mapped[str | None] = mapped_column(String(8))  # ISO 3166-1 alpha-3 (or "eu")
    org_type: Mapped[str | None] = mapped_column(String(64))
    last_channel: Mapped[str | None] = mapped_column(String(16))  # where they answered last
    opted_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("channel", "channel_user_id",
                                       name="uq_respondents_channel_user"),)


class Address(Base):
    """One channel address of a respondent: a Telegram chat, an email address."""

    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    respondent_id: Mapped[int] = mapped_column(ForeignKey("respondents.id"))
    channel: Mapped[str] = mapped_column(String(16))
    channel_user_id: Mapped[str] = mapped_column(String(320))
    unreachable: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        UniqueConstraint("channel", "channel_user_id", name="uq_addresses_channel_user"),
        Index("ix_addresses_respondent", "respondent_id"),
    )


class Round(Base):
    """A reporting round: one questionnaire, one deadline, the contacts invited to it."""

    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    questionnaire_id: Mapped[str] = mapped_column(String(64))
    deadline: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("questionnaire_id", "deadline",
                                       name="uq_rounds_questionnaire_deadline"),)


class Invitation(Base):
    """One contact invited to one round; its token binds Telegram and email to the person."""

    __tablename__ = "invitations"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    respondent_id: Mapped[int] = mapped_column(ForeignKey("respondents.id"))
    email: Mapped[str] = mapped_column(String(320))  # normalized
    language: Mapped[str] = mapped_column(String(8))
    # pending (not sent yet) | sent | undeliverable
    status: Mapped[str] = mapped_column(String(16))
    outbox_id: Mapped[int | None] = mapped_column(BigId)  # the invitation's outbox row
    message_id: Mapped[str | None] = mapped_column(String(255))  # its Message-ID header
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    times_sent: Mapped[int] = mapped_column(Integer, default=0)
    undeliverable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    undeliverable_reason: Mapped[str | None] = mapped_column(Text)
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    last_reminder_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        UniqueConstraint("round_id", "email", name="uq_invitations_round_email"),
        Index("ix_invitations_respondent", "respondent_id"),
        Index("ix_invitations_message_id", "message_id"),
    )


class Submission(Base):
    """One version of one report; an amendment is a new row with the same reference."""

    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    respondent_id: Mapped[int] = mapped_column(ForeignKey("respondents.id"))
    questionnaire_id: Mapped[str] = mapped_column(String(64))
    questionnaire_version: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer, default=1)
    supersedes_id: Mapped[int | None] = mapped_column(BigId)
    status: Mapped[str] = mapped_column(String(16))  # draft | submitted | cancelled
    language: Mapped[str | None] = mapped_column(String(8))
    channel: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        UniqueConstraint("reference", "version", name="uq_submissions_reference_version"),
        Index("ix_submissions_status", "status"),
        Index("ix_submissions_respondent", "respondent_id"),
    )


class Answer(Base):
    """One answer: question id + repeat index (0 outside the repeated section)."""

    __tablename__ = "answers"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"))
    question_id: Mapped[str] = mapped_column(String(64))
    repeat_index: Mapped[int] = mapped_column(Integer, default=0)
    value: Mapped[object] = mapped_column(JSON)  # as the engine stores it; null = skipped
    value_code: Mapped[str | None] = mapped_column(Text)  # flat form: codes ';'-joined
    answered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    channel_message_id: Mapped[str | None] = mapped_column(String(255))
    channel: Mapped[str | None] = mapped_column(String(16))  # where the answer came from
    __table_args__ = (UniqueConstraint("submission_id", "question_id", "repeat_index",
                                       name="uq_answers_slot"),)


class InboundMessage(Base):
    """Every message received, processed or not, with its raw payload and what became of it."""

    __tablename__ = "inbound_messages"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))
    channel_message_id: Mapped[str] = mapped_column(String(255))
    channel_user_id: Mapped[str | None] = mapped_column(String(320))
    respondent_id: Mapped[int | None] = mapped_column(BigId)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # processed | failed | ignored | rejected
    reason: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("channel", "channel_message_id",
                                       name="uq_inbound_channel_message"),)


class OutboxMessage(Base):
    """A reply written in the same transaction as the answers; sent after commit."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(16))
    respondent_id: Mapped[int | None] = mapped_column(BigId)
    address: Mapped[str] = mapped_column(String(320))
    payload: Mapped[dict] = mapped_column(JSON)
    # pending | sent | failed | coalesced (an identical reply to the same address was pending)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A sender commits its claim before sending: until the lease ends nobody else (a
    # restarted process, another replica) sends the row again.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (Index("ix_outbox_pending", "status", "channel"),
                      Index("ix_outbox_address_created", "channel", "address", "created_at"))


class Event(Base):
    """Audit trail: language choices, submissions, amendments, invalid answers, stale presses."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    respondent_id: Mapped[int | None] = mapped_column(BigId)
    submission_id: Mapped[int | None] = mapped_column(BigId)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


respondents = Respondent.__table__
addresses = Address.__table__
rounds = Round.__table__
invitations = Invitation.__table__
submissions = Submission.__table__
answers = Answer.__table__
inbound_messages = InboundMessage.__table__
outbox = OutboxMessage.__table__
events = Event.__table__
