"""kite-ledger: an event-sourced order ledger for traders on Zerodha's Kite Connect API.

The public API::

    from ledger import open_ledger, SubmitOrder, RecordAccepted, RecordFill

See README.md for a tour.
"""

from __future__ import annotations

from ledger.application import OrderLedger, open_ledger
from ledger.commands import (
    BrokerUpdate,
    CancelOrder,
    ModifyOrder,
    RecordAccepted,
    RecordCancelled,
    RecordCancelRejected,
    RecordExpired,
    RecordFill,
    RecordModified,
    RecordModifyRejected,
    RecordRejected,
    RecordTriggered,
    SubmitOrder,
)
from ledger.domain.errors import (
    BrokerIdMismatch,
    ClientOrderIdReused,
    ConcurrencyConflict,
    InstrumentMismatch,
    InvalidCommand,
    LedgerError,
    OrderNotFound,
    Overfill,
    TransitionRefused,
    UnknownInstrument,
)
from ledger.domain.identity import order_id_for, tag_for
from ledger.domain.order import Order
from ledger.domain.status import OrderStatus
from ledger.domain.values import (
    Exchange,
    Instrument,
    InstrumentRef,
    OrderType,
    Product,
    Side,
    Source,
    Validity,
    Variety,
)
from ledger.instruments import InstrumentCatalog
from ledger.persistence import StorageError, StorageSettings

__all__ = [
    "BrokerIdMismatch",
    "BrokerUpdate",
    "CancelOrder",
    "ClientOrderIdReused",
    "ConcurrencyConflict",
    "Exchange",
    "Instrument",
    "InstrumentCatalog",
    "InstrumentMismatch",
    "InstrumentRef",
    "InvalidCommand",
    "LedgerError",
    "ModifyOrder",
    "Order",
    "OrderLedger",
    "OrderNotFound",
    "OrderStatus",
    "OrderType",
    "Overfill",
    "Product",
    "RecordAccepted",
    "RecordCancelRejected",
    "RecordCancelled",
    "RecordExpired",
    "RecordFill",
    "RecordModified",
    "RecordModifyRejected",
    "RecordRejected",
    "RecordTriggered",
    "Side",
    "Source",
    "StorageError",
    "StorageSettings",
    "SubmitOrder",
    "TransitionRefused",
    "UnknownInstrument",
    "Validity",
    "Variety",
    "open_ledger",
    "order_id_for",
    "tag_for",
]
