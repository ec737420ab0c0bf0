"""Commands: what strategies, the CLI and the broker gateway ask the ledger to do.

These pydantic models are the boundary. Building one validates it: types, enums, money
(Decimal, int or a decimal string: never a float), timezone-aware times, and every order
rule that needs no reference data. A bad command raises `InvalidCommand`, which names each
field and the rule it broke, before anything could be written.

Commands are imperative (`SubmitOrder`); the events they lead to are in the past tense
(`Order.Submitted`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Self
from uuid import UUID

import pydantic
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from ledger.domain.errors import InvalidCommand, Problem
from ledger.domain.identity import order_id_for, tag_for
from ledger.domain.rules import OrderTerms, check_terms
from ledger.domain.values import (
    MAX_AMOUNT,
    MAX_AMOUNT_PLACES,
    MAX_PRICE_PLACES,
    MAX_QUANTITY,
    Exchange,
    InstrumentRef,
    OrderChanges,
    OrderType,
    Product,
    Side,
    Source,
    Validity,
    Variety,
)


def _refuse_float(value: object) -> object:
    if isinstance(value, float):
        raise ValueError(
            f"must be a Decimal, an int or a decimal string, not the float {value!r}"
            " (floats cannot hold amounts like 0.05 exactly)"
        )
    return value


_Amount = Annotated[
    Decimal,
    BeforeValidator(_refuse_float),
    Field(allow_inf_nan=False, ge=-MAX_AMOUNT, le=MAX_AMOUNT),
]
#: An exact amount of money. Floats are refused; "812.35" and Decimal("812.35") are not.
#: At most 40 places: Decimal("1E-20000") was accepted, written, and then stopped the
#: PostgreSQL projections for good (numeric overflow) on every catch-up.
Money = Annotated[_Amount, Field(decimal_places=MAX_AMOUNT_PLACES)]
#: A price: money in at most 4 decimal places (Kite's finest tick is 0.0025), so that a
#: price times a quantity, and their sums, stay exact in Decimal's 28 digits.
Price = Annotated[_Amount, Field(decimal_places=MAX_PRICE_PLACES)]


def _refuse_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, not the boolean {value!r}")
    return value


#: A number of units. The sign is checked by the order rules (which say why); the size
#: here, so no absurd number reaches the log.
Quantity = Annotated[
    int, BeforeValidator(_refuse_bool), Field(strict=False, ge=-MAX_QUANTITY, le=MAX_QUANTITY)
]
Text = Annotated[str, Field(min_length=1, max_length=200)]

#: C0 controls and DEL, but for tab, line feed and carriage return.
_CONTROL: Final = {code: True for code in (*range(0x20), 0x7F) if chr(code) not in "\t\n\r"}


def _refused(command: str, error: pydantic.ValidationError) -> InvalidCommand:
    """pydantic's errors as the ledger's refusal, one problem a field."""
    return InvalidCommand(
        command,
        [
            Problem(
                ".".join(str(part) for part in e["loc"]) or "command",
                e["msg"].removeprefix("Value error, "),
            )
            for e in error.errors()
        ],
    )


class Command(BaseModel):
    """Base of every command: frozen, no unknown fields, domain errors on bad input."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as error:
            raise _refused(type(self).__name__, error) from None
        self._check()

    def _check(self) -> None:
        problems = self.problems()
        if problems:
            raise InvalidCommand(type(self).__name__, problems)

    @pydantic.field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        """Text is refused with control characters in it: a NUL was accepted, written,
        and then stopped the PostgreSQL projections for good (text cannot hold it), and
        in an account, an id or a strategy the others are no better. Tab and line breaks
        may stand in free text."""
        if isinstance(value, str):
            bad = next((c for c in value if _CONTROL.get(ord(c), False)), None)
            if bad is not None:
                raise ValueError(f"must not contain control characters (found {bad!r})")
        return value

    def problems(self) -> list[Problem]:
        """Rules across fields; subclasses add theirs."""
        return []

    # pydantic's ways of making a model without (all of) its checks: a command made by
    # `model_construct` was recorded as given (a trade id " T1" beside "T1" counted the
    # fill twice; a NUL stopped the PostgreSQL projections), and `model_validate` and
    # `model_copy(update=...)` skip `problems`. Here each checks as the constructor does.

    @classmethod
    def model_construct(  # type: ignore[override]  # (the plugin types it per model)
        cls, _fields_set: set[str] | None = None, **values: Any
    ) -> Self:
        """The constructor, checks and all: a command is never made unchecked."""
        return cls(**values)

    @classmethod
    def model_validate(
        cls,
        obj: Any,
        *,
        strict: bool | None = None,
        extra: Any = None,
        from_attributes: bool | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        """pydantic's validation, with its options, then the rules across fields; errors
        as the constructor's (`InvalidCommand`)."""
        return cls._checked(
            lambda: super(Command, cls).model_validate(
                obj,
                strict=strict,
                extra=extra,
                from_attributes=from_attributes,
                context=context,
                by_alias=by_alias,
                by_name=by_name,
            )
        )

    @classmethod
    def model_validate_json(
        cls,
        json_data: str | bytes | bytearray,
        *,
        strict: bool | None = None,
        extra: Any = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:
        """As `model_validate`, from JSON text."""
        return cls._checked(
            lambda: super(Command, cls).model_validate_json(
                json_data, strict=strict, extra=extra, context=context, by_alias=by_alias,
                by_name=by_name,
            )
        )  # fmt: skip

    @classmethod
    def _checked(cls, validate: Callable[[], Self]) -> Self:
        """pydantic's validation (`validate`) with its errors as `InvalidCommand`, then
        the rules across fields."""
        try:
            command = validate()
        except pydantic.ValidationError as error:
            raise _refused(cls.__name__, error) from None
        command._check()
        return command

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with `update`, a new command made from the fields set and the changed
        ones, and checked (the fields it was given stay the fields set)."""
        if not update:
            return super().model_copy(deep=deep)
        given = self.model_dump(include=set(self.model_fields_set))
        return type(self)(**{**given, **update})

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        """Build from a mapping (JSON, CLI), with the same validation."""
        if isinstance(data, Mapping) and not isinstance(data, dict):
            data = dict(data)
        if not isinstance(data, dict):
            raise InvalidCommand(
                cls.__name__, [Problem("command", f"expected a mapping, got {type(data).__name__}")]
            )
        odd = [repr(key) for key in data if not isinstance(key, str)]
        if odd:
            raise InvalidCommand(
                cls.__name__,
                [Problem("command", f"field names must be text, got {', '.join(odd)}")],
            )
        return cls(**data)


class SubmitOrder(Command):
    """Create an order. Idempotent per (account, client_order_id)."""

    account: Text
    client_order_id: Annotated[str, Field(min_length=1, max_length=64)]
    exchange: Exchange
    tradingsymbol: Annotated[str, Field(min_length=1, max_length=64)]
    side: Side
    quantity: Quantity
    order_type: OrderType
    product: Product
    variety: Variety = Variety.REGULAR
    validity: Validity = Validity.DAY
    validity_ttl: Quantity | None = None
    price: Price | None = None
    trigger_price: Price | None = None
    disclosed_quantity: Quantity = 0
    market_protection: Money | None = None
    #: Kite's tag for the order: always the ledger's own (`tag_for` of the order id); a
    #: caller may leave it out or give that same value.
    tag: str | None = None
    strategy: Text | None = None
    reference_price: Money | None = None
    actor: Text = "api"

    @property
    def instrument(self) -> InstrumentRef:
        return InstrumentRef(self.exchange, self.tradingsymbol)

    @property
    def terms(self) -> OrderTerms:
        return OrderTerms(
            side=self.side,
            quantity=self.quantity,
            order_type=self.order_type,
            variety=self.variety,
            validity=self.validity,
            validity_ttl=self.validity_ttl,
            price=self.price,
            trigger_price=self.trigger_price,
            disclosed_quantity=self.disclosed_quantity,
            market_protection=self.market_protection,
            tag=self.tag,
        )

    def problems(self) -> list[Problem]:
        problems = check_terms(self.terms)
        if "/" in self.account:
            # The order id is made from "order/{account}/{client_order_id}": account "A/1"
            # with "x" and account "A" with "1/x" would be one order.
            problems.append(Problem("account", f"must not contain '/', got {self.account!r}"))
        # The tag is how a placement whose outcome is unknown is found at Kite before it
        # could be sent again: a label shared by several orders would find another.
        own = (
            None if self.tag is None else tag_for(order_id_for(self.account, self.client_order_id))
        )
        if own is not None and self.tag != own and "tag" not in {p.field for p in problems}:
            problems.append(
                Problem(
                    "tag",
                    f"is the ledger's own, {own!r} for this order: it carries the order id to"
                    f" Kite so that an order is never placed twice; got {self.tag!r}"
                    " (a label belongs in strategy)",
                )
            )
        if self.reference_price is not None and self.reference_price <= 0:
            problems.append(
                Problem("reference_price", f"must be a positive amount, got {self.reference_price}")
            )
        return problems


class _OrderCommand(Command):
    order_id: UUID


class ModifyOrder(_OrderCommand):
    """Ask the broker to change a working order. Unnamed fields stay as they are."""

    quantity: Quantity | None = None
    price: Price | None = None
    trigger_price: Price | None = None
    order_type: OrderType | None = None
    validity: Validity | None = None
    disclosed_quantity: Quantity | None = None
    actor: Text = "api"

    @property
    def changes(self) -> OrderChanges:
        return OrderChanges(
            quantity=self.quantity,
            price=self.price,
            trigger_price=self.trigger_price,
            order_type=self.order_type,
            validity=self.validity,
            disclosed_quantity=self.disclosed_quantity,
        )

    def problems(self) -> list[Problem]:
        if self.changes.is_empty():
            return [Problem("changes", "name at least one field to change")]
        return []


class CancelOrder(_OrderCommand):
    """Ask the broker to cancel a working order."""

    reason: Text | None = None
    actor: Text = "api"


# --------------------------------------------------------------------------- broker updates


class _BrokerUpdate(_OrderCommand):
    source: Source = Source.BROKER


class RecordAccepted(_BrokerUpdate):
    """Kite accepted the order and gave it an id."""

    kind: Literal["accepted"] = "accepted"
    broker_order_id: Annotated[str, Field(min_length=1, max_length=64)]
    exchange_order_id: str | None = None
    broker_timestamp: AwareDatetime | None = None


class RecordRejected(_BrokerUpdate):
    """The broker, the exchange or the ledger refused the order."""

    kind: Literal["rejected"] = "rejected"
    reason: Text
    broker_timestamp: AwareDatetime | None = None


class RecordModified(_BrokerUpdate):
    """The broker changed the order (at our request or not)."""

    kind: Literal["modified"] = "modified"
    quantity: Quantity | None = None
    price: Price | None = None
    trigger_price: Price | None = None
    order_type: OrderType | None = None
    validity: Validity | None = None
    disclosed_quantity: Quantity | None = None
    broker_timestamp: AwareDatetime | None = None

    @property
    def changes(self) -> OrderChanges:
        return OrderChanges(
            quantity=self.quantity,
            price=self.price,
            trigger_price=self.trigger_price,
            order_type=self.order_type,
            validity=self.validity,
            disclosed_quantity=self.disclosed_quantity,
        )

    def problems(self) -> list[Problem]:
        if self.changes.is_empty():
            return [Problem("changes", "name at least one changed field")]
        return []


class RecordModifyRejected(_BrokerUpdate):
    """The broker refused a modification."""

    kind: Literal["modify_rejected"] = "modify_rejected"
    reason: Text


class RecordTriggered(_BrokerUpdate):
    """A stop order's trigger was hit."""

    kind: Literal["triggered"] = "triggered"
    triggered_at: AwareDatetime


class RecordFill(_BrokerUpdate):
    """A trade. Identified by (exchange, trade_id): reporting it again changes nothing."""

    kind: Literal["filled"] = "filled"
    trade_id: Annotated[str, Field(min_length=1, max_length=64)]
    exchange: Exchange
    tradingsymbol: Annotated[str, Field(min_length=1, max_length=64)]
    quantity: Quantity
    price: Price
    exchange_timestamp: AwareDatetime | None = None
    charges: Money | None = None

    @property
    def instrument(self) -> InstrumentRef:
        return InstrumentRef(self.exchange, self.tradingsymbol)

    def problems(self) -> list[Problem]:
        problems = []
        if self.quantity <= 0:
            problems.append(Problem("quantity", f"must be greater than 0, got {self.quantity}"))
        if self.price <= 0:
            problems.append(Problem("price", f"must be a positive amount, got {self.price}"))
        if self.charges is not None and self.charges < 0:
            problems.append(Problem("charges", f"must not be negative, got {self.charges}"))
        return problems


class RecordCancelled(_BrokerUpdate):
    """The broker cancelled the order."""

    kind: Literal["cancelled"] = "cancelled"
    reason: Text | None = None
    broker_timestamp: AwareDatetime | None = None


class RecordCancelRejected(_BrokerUpdate):
    """The broker refused a cancellation."""

    kind: Literal["cancel_rejected"] = "cancel_rejected"
    reason: Text


class RecordExpired(_BrokerUpdate):
    """The order lapsed (IOC remainder, TTL, end of day)."""

    kind: Literal["expired"] = "expired"
    reason: Text


BrokerUpdate = (
    RecordAccepted
    | RecordRejected
    | RecordModified
    | RecordModifyRejected
    | RecordTriggered
    | RecordFill
    | RecordCancelled
    | RecordCancelRejected
    | RecordExpired
)
