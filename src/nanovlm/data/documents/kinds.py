"""What each kind of document holds: the fields of a KYC form, a trade confirmation and an account statement,
their labels, and the anomalies a reviewer looks for (a missing signature, a date not in the requested format,
totals that do not add up). A `Document` is decided here, before any drawing, so its ground truth is exact."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import fields as f

KINDS = ("kyc", "trade", "statement")


@dataclass
class Entry:
    key: str            # the JSON key a model answers with, e.g. "date_of_birth"
    label: str          # what the form prints next to it, e.g. "Date of Birth (DD/MM/YYYY)"
    value: str          # exactly what is written in it: the ground truth
    comb: bool = False  # short codes may be written one character per box on a form


@dataclass
class Document:
    kind: str
    title: str
    issuer: str
    entries: list[Entry]
    hand_filled: bool               # values written by a person (else printed by a computer)
    signed: bool
    signer_label: str
    stamp_words: tuple[str, ...] | None
    date_key: str                   # the date field whose format the form prescribes
    date_format: str
    anomalies: list[str]
    checks: dict                    # name -> bool, the answers of the checks style
    table: dict | None = None       # statements: {"columns": [...], "rows": [[...], ...]}
    extra: dict = field(default_factory=dict)

    @property
    def values(self) -> dict[str, str]:
        return {e.key: e.value for e in self.entries}


ISSUERS = ("Kaveri Bank", "Northwind Securities", "Atlas Capital", "Lotus Finance", "Meridian Bank",
           "Orion Broking", "Sapphire Trust", "Everest Investments")

# how likely each anomaly is; frequent enough that the checks style sees both answers often
P_UNSIGNED, P_BAD_DATE, P_BAD_TOTAL = 0.3, 0.3, 0.3


def _date_entry(rng, key, label, date, date_format) -> tuple[Entry, bool]:
    """The prescribed format is printed under the title ("Dates: DD/MM/YYYY"); an anomalous form writes the date
    another way."""
    bad = rng.random() < P_BAD_DATE
    value = f.off_format_date(rng, date) if bad else f.write_date(date, date_format)
    return Entry(key, label, value), not bad


def plan_kyc(rng: random.Random) -> Document:
    culture = rng.choice(f.CULTURES)
    name = f.person_name(rng, culture)
    date_format = rng.choice(tuple(f.DATE_FORMATS))
    dob, date_ok = _date_entry(rng, "date_of_birth", rng.choice(("Date of Birth", "DOB", "Birth Date")),
                               f.birth_date(rng), date_format)
    entries = [
        Entry("name", rng.choice(("Name", "Full Name", "Applicant Name", "Customer Name")), name),
        dob,
        Entry("pan", rng.choice(("PAN", "PAN No.", "Tax ID (PAN)")), f.pan(rng, f.surname_of(name, culture)), comb=True),
        Entry("phone", rng.choice(("Mobile", "Phone", "Mobile No.", "Contact No.")), f.phone(rng)),
        Entry("address", rng.choice(("Address", "Residential Address", "Address Line")), f.address(rng)),
        Entry("account_number", rng.choice(("Account No.", "Account Number", "Bank A/c No.")), f.account_number(rng)),
    ]
    signed = rng.random() >= P_UNSIGNED
    issuer = rng.choice(ISSUERS)
    return Document("kyc", rng.choice(("KYC Application Form", "Know Your Customer", "Account Opening Form",
                                       "Customer KYC Form")),
                    issuer, entries, hand_filled=rng.random() < 0.6, signed=signed,
                    signer_label=rng.choice(("Signature of Applicant", "Applicant Signature", "Signature")),
                    stamp_words=("KYC", "VERIFIED") if rng.random() < 0.5 else None,
                    date_key="date_of_birth", date_format=date_format,
                    anomalies=_anomalies(signed, date_ok, True),
                    checks={"signature_present": signed, "date_format_valid": date_ok})


def plan_trade(rng: random.Random) -> Document:
    grouped = rng.random() < 0.7
    qty, price = f.quantity(rng), f.price_cents(rng)
    amount = qty * price
    totals_ok = rng.random() >= P_BAD_TOTAL
    if not totals_ok:   # a typo-sized error: a digit off, or a fee added without a line for it
        amount += rng.choice((1, -1)) * rng.choice((100, 1000, 10000, rng.randint(1, 99999)))
        amount = abs(amount) or 100
    date_format = rng.choice(tuple(f.DATE_FORMATS))
    trade_date, date_ok = _date_entry(rng, "trade_date", rng.choice(("Trade Date", "Date")), f.recent_date(rng),
                                      date_format)
    entries = [
        Entry("trade_ref", rng.choice(("Trade Ref", "Contract No.", "Order No.")), f.reference(rng, rng.choice(("TRD", "CN", "ORD")))),
        Entry("security", rng.choice(("Security", "Instrument", "Scrip")), f.security_name(rng)),
        Entry("isin", "ISIN", f.isin(rng), comb=True),
        Entry("side", rng.choice(("Side", "Buy/Sell", "Transaction")), rng.choice(("BUY", "SELL"))),
        Entry("quantity", rng.choice(("Quantity", "Qty", "No. of Units")), f.count(qty, grouped)),
        Entry("price", rng.choice(("Price", "Rate", "Price per Unit")), f.money(price, grouped)),
        Entry("amount", rng.choice(("Amount", "Net Amount", "Total Value")), f.money(amount, grouped)),
        trade_date,
        Entry("trade_time", rng.choice(("Trade Time", "Time", "Execution Time")), f.time_of_day(rng)),
    ]
    signed = rng.random() >= P_UNSIGNED
    issuer = rng.choice(ISSUERS)
    return Document("trade", rng.choice(("Trade Confirmation", "Contract Note", "Trade Slip", "Confirmation of Trade")),
                    issuer, entries, hand_filled=rng.random() < 0.25, signed=signed,
                    signer_label=rng.choice(("Authorised Signatory", "For " + issuer, "Dealer Signature")),
                    stamp_words=(issuer.split()[0].upper(), "BROKING") if rng.random() < 0.5 else None,
                    date_key="trade_date", date_format=date_format,
                    anomalies=_anomalies(signed, date_ok, totals_ok),
                    checks={"signature_present": signed, "date_format_valid": date_ok, "totals_match": totals_ok},
                    extra={"quantity": qty, "price_cents": price, "amount_cents": amount})


def plan_statement(rng: random.Random) -> Document:
    grouped = rng.random() < 0.7
    date_format = rng.choice(tuple(f.DATE_FORMATS))
    end = f.recent_date(rng)
    opening = rng.randint(0, 5_000_000)
    rows, balance = [], opening
    for day in sorted(end.replace(day=rng.randint(1, end.day)) for _ in range(rng.randint(3, 4))):
        credit = rng.random() < 0.4
        cents = rng.choice((rng.randint(100, 99999), rng.randint(10000, 900000)))
        balance += cents if credit else -cents
        rows.append([f.write_date(day, date_format), rng.choice(f.TRANSACTION_TEXTS),
                     "" if credit else f.money(cents, grouped), f.money(cents, grouped) if credit else ""])
    totals_ok = rng.random() >= P_BAD_TOTAL
    closing = balance if totals_ok else balance + rng.choice((1, -1)) * rng.choice((100, 1000, rng.randint(1, 99999)))
    statement_date, date_ok = _date_entry(rng, "statement_date", rng.choice(("Statement Date", "Date", "As on")),
                                          end, date_format)
    entries = [
        Entry("account_holder", rng.choice(("Account Holder", "Name", "Customer")), f.person_name(rng)),
        Entry("account_number", rng.choice(("Account No.", "A/c No.", "Account Number")), f.account_number(rng)),
        statement_date,
        Entry("opening_balance", rng.choice(("Opening Balance", "Balance b/f")), f.money(opening, grouped)),
        Entry("closing_balance", rng.choice(("Closing Balance", "Balance c/f")), f.money(closing, grouped)),
    ]
    signed = rng.random() >= P_UNSIGNED
    issuer = rng.choice(ISSUERS)
    return Document("statement", rng.choice(("Account Statement", "Statement of Account", "Bank Statement")),
                    issuer, entries, hand_filled=False, signed=signed,
                    signer_label=rng.choice(("Branch Manager", "Authorised Signatory")),
                    stamp_words=(issuer.split()[0].upper(), "BANK") if rng.random() < 0.5 else None,
                    date_key="statement_date", date_format=date_format,
                    anomalies=_anomalies(signed, date_ok, totals_ok),
                    checks={"signature_present": signed, "date_format_valid": date_ok, "totals_match": totals_ok},
                    table={"columns": ["Date", "Description", "Debit", "Credit"], "rows": rows})


def _anomalies(signed: bool, date_ok: bool, totals_ok: bool) -> list[str]:
    return [name for name, bad in (("missing_signature", not signed), ("wrong_date_format", not date_ok),
                                   ("totals_mismatch", not totals_ok)) if bad]


PLANNERS = {"kyc": plan_kyc, "trade": plan_trade, "statement": plan_statement}


def plan_document(kind: str, rng: random.Random) -> Document:
    return PLANNERS[kind](rng)
