"""Small immutable value types the order is made of.

Enumerations are plain `Enum`s (not `StrEnum`) on purpose: the persistence layer registers
a transcoding for each, so they come back from the log as the same enum member. A
`StrEnum` would silently come back as `str`.

Money is `Decimal` everywhere. Floats cannot represent 0.05 exactly, and a ledger that is
"correct to the paisa" cannot start from an approximation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from zoneinfo import ZoneInfo

#: Exchange times (Kite's timestamps, trading days) are Indian Standard Time.
IST = ZoneInfo("Asia/Kolkata")

#: The largest quantity and amount the ledger holds. Far beyond any real order, and small
#: enough that quantity x price stays exact in Decimal's 28 digits and fits every store.
MAX_QUANTITY = 10**9
MAX_AMOUNT = Decimal(10**12)
#: Decimal places a price may have: Kite's finest tick is 0.0025 (currency derivatives).
MAX_PRICE_PLACES = 4
#: Places an amount may carry (charges, a reference price such as a VWAP a strategy
#: computed, to Decimal's 28 digits): far short of what PostgreSQL's numeric can hold.
MAX_AMOUNT_PLACES = 40


class Exchange(Enum):
    """Exchanges (Kite's `exchange` field)."""

    NSE = "NSE"
    BSE = "BSE"
    NFO = "NFO"
    BFO = "BFO"
    CDS = "CDS"
    BCD = "BCD"
    MCX = "MCX"

    @property
    def is_derivatives(self) -> bool:
        """True for futures and options segments, where quantities come in lots."""
        return self not in (Exchange.NSE, Exchange.BSE)

    @property
    def counts_contracts(self) -> bool:
        """True where Kite's quantity counts contracts, not units (currency and commodity
        derivatives): a price move is worth the contract's multiplier per unit of quantity
        (MCX GOLDM: 10), which Kite's instruments dump does not give."""
        return self in (Exchange.CDS, Exchange.BCD, Exchange.MCX)


class Side(Enum):
    """Kite's `transaction_type`."""

    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell: the sign of the position change."""
        return 1 if self is Side.BUY else -1


class OrderType(Enum):
    """Kite's `order_type`. SL is a stop-limit, SL-M a stop-market order."""

    MARKET = "MARKET"
    LIMIT = "LIMIT"
    SL = "SL"
    SL_M = "SL-M"

    @property
    def needs_price(self) -> bool:
        return self in (OrderType.LIMIT, OrderType.SL)

    @property
    def needs_trigger_price(self) -> bool:
        return self in (OrderType.SL, OrderType.SL_M)

    @property
    def needs_market_protection(self) -> bool:
        return self in (OrderType.MARKET, OrderType.SL_M)


class Product(Enum):
    """Kite's `product`: CNC delivery, MIS intraday, NRML carry-forward F&O, MTF margin."""

    CNC = "CNC"
    MIS = "MIS"
    NRML = "NRML"
    MTF = "MTF"


class Variety(Enum):
    """Kite's order `variety` (also the URL segment of the place-order call)."""

    REGULAR = "regular"
    AMO = "amo"
    CO = "co"
    ICEBERG = "iceberg"
    AUCTION = "auction"


class Validity(Enum):
    """Kite's `validity`. TTL orders carry `validity_ttl` in minutes."""

    DAY = "DAY"
    IOC = "IOC"
    TTL = "TTL"


class Source(Enum):
    """Where an event's information came from (the audit trail shows it)."""

    LEDGER = "ledger"  # a command issued through the ledger (strategy, CLI, HTTP)
    BROKER = "broker"  # Kite's reply to a call (place, modify, cancel)
    EXCHANGE = "exchange"  # the exchange, relayed by Kite (e.g. an RMS or exchange reject)
    POSTBACK = "postback"
    WEBSOCKET = "websocket"
    POLL = "poll"
    RECONCILIATION = "reconciliation"


@dataclass(frozen=True, slots=True)
class InstrumentRef:
    """What identifies an instrument in every Kite call: exchange and trading symbol."""

    exchange: Exchange
    tradingsymbol: str

    def __str__(self) -> str:
        return f"{self.exchange.value}:{self.tradingsymbol}"


@dataclass(frozen=True, slots=True)
class Instrument:
    """Reference data for one instrument (a row of Kite's instruments dump)."""

    ref: InstrumentRef
    tick_size: Decimal
    lot_size: int
    instrument_token: int | None = None
    name: str = ""
    instrument_type: str = "EQ"
    segment: str = ""
    expiry: date | None = None
    strike: Decimal | None = None
    #: What a price move of one rupee is worth per unit of quantity: 1 where quantities
    #: are units (equity, NFO, BFO), the contract size where they count contracts (CDS,
    #: BCD, MCX). None: not known (Kite's dump has no such column), so not tradable here.
    multiplier: int | None = 1


@dataclass(frozen=True, slots=True)
class OrderChanges:
    """The fields a modification changes; `None` means "unchanged".

    These are the fields Kite's modify-order call accepts for a regular order.
    """

    quantity: int | None = None
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    order_type: OrderType | None = None
    validity: Validity | None = None
    disclosed_quantity: int | None = None

    def is_empty(self) -> bool:
        return all(
            value is None
            for value in (
                self.quantity,
                self.price,
                self.trigger_price,
                self.order_type,
                self.validity,
                self.disclosed_quantity,
            )
        )


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution, as the order keeps it."""

    trade_id: str
    quantity: int
    price: Decimal
    exchange_timestamp: datetime | None
    source: Source
    recorded_at: datetime
    charges: Decimal | None = None

    @property
    def value(self) -> Decimal:
        """Quantity times price: exact, since both are exact."""
        return self.price * self.quantity
