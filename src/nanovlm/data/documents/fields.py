"""Realistic field values for synthetic documents: names from several cultures, addresses, PAN-style tax ids,
phone and account numbers, dates in several formats, ISIN codes, security names, quantities, prices and times.

Every generator is a pure function of a `random.Random`, so a document is a pure function of its seed. Values are
strings exactly as they are printed on the page: the ground truth a model must read back character for character.
"""
from __future__ import annotations

import datetime as dt
import random
import re
import string

# -----------------------------------------------------------------------------
# people

# (given names, surnames, surname first?) per culture, romanised as they appear on forms
NAMES = {
    "indian": (("Aarav", "Priya", "Rohan", "Ananya", "Vikram", "Sneha", "Arjun", "Kavya", "Rahul", "Lakshmi",
                "Siddharth", "Meera", "Karthik", "Divya", "Amit", "Pooja", "Naveen", "Ishita"),
               ("Sharma", "Patel", "Iyer", "Reddy", "Gupta", "Nair", "Singh", "Mehta", "Rao", "Banerjee",
                "Kulkarni", "Joshi", "Menon", "Chatterjee", "Desai", "Pillai"), False),
    "chinese": (("Wei", "Fang", "Jing", "Lei", "Min", "Hui", "Jun", "Xiu", "Yong", "Li Na", "Hao", "Mei"),
                ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou"), True),
    "arabic": (("Omar", "Fatima", "Yusuf", "Aisha", "Khalid", "Layla", "Hassan", "Mariam", "Tariq", "Noor"),
               ("Al-Sayed", "Haddad", "Khan", "Rahman", "Nasser", "Farouk", "Qureshi", "Mansour"), False),
    "hispanic": (("José", "María", "Carlos", "Lucía", "Javier", "Sofía", "Diego", "Valentina", "Andrés", "Camila"),
                 ("García", "Rodríguez", "Martínez", "López", "Hernández", "Pérez", "Sánchez", "Torres"), False),
    "english": (("James", "Emily", "Oliver", "Charlotte", "William", "Grace", "Thomas", "Hannah", "George", "Lucy"),
                ("Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Evans", "Walker", "Clarke"), False),
    "nigerian": (("Chinedu", "Ngozi", "Oluwaseun", "Adaeze", "Emeka", "Folake", "Tunde", "Chiamaka", "Ifeanyi"),
                 ("Okafor", "Adeyemi", "Nwosu", "Balogun", "Eze", "Okonkwo", "Adebayo", "Obi"), False),
    "japanese": (("Haruto", "Yui", "Sota", "Aoi", "Ren", "Hina", "Kenji", "Sakura", "Takumi", "Yuki"),
                 ("Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura"), False),
    "slavic": (("Ivan", "Olga", "Dmitri", "Anna", "Sergei", "Natalia", "Pavel", "Irina", "Tomasz", "Katarzyna"),
               ("Ivanov", "Petrova", "Smirnov", "Kowalski", "Nowak", "Volkov", "Novak", "Popescu"), False),
    "german": (("Lukas", "Anna", "Jonas", "Lea", "Felix", "Marie", "Maximilian", "Sophie", "Paul", "Jana"),
               ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Becker", "Wagner", "Hoffmann"), False),
    "vietnamese": (("Minh", "Lan", "Tuan", "Huong", "Duc", "Thu", "Quang", "Linh"),
                   ("Nguyen", "Tran", "Le", "Pham", "Hoang", "Vu", "Dang"), True),
}
CULTURES = tuple(NAMES)


def person_name(rng: random.Random, culture: str | None = None) -> str:
    culture = culture or rng.choice(CULTURES)
    given, surnames, surname_first = NAMES[culture]
    first, last = rng.choice(given), rng.choice(surnames)
    if surname_first:
        return f"{last} {first}"
    if rng.random() < 0.2:   # a middle initial, as many forms ask for
        return f"{first} {rng.choice(string.ascii_uppercase)}. {last}"
    return f"{first} {last}"


def surname_of(name: str, culture: str) -> str:
    return name.split()[0] if NAMES[culture][2] else name.split()[-1]


# -----------------------------------------------------------------------------
# addresses: short enough for one line of a form

STREETS = ("MG Road", "Park Street", "Station Road", "High Street", "Church Lane", "Lake View", "Main Street",
           "Hill Road", "Mill Lane", "Oak Avenue", "Gandhi Nagar", "Nehru Marg", "King Street", "Elm Drive",
           "Rose Court", "Ring Road", "Market Road", "Temple Street", "Canal Walk", "Green Lane")
CITIES = {
    "in": ("Mumbai", "Pune", "Delhi", "Chennai", "Kolkata", "Jaipur", "Kochi", "Indore", "Nagpur", "Mysuru"),
    "uk": ("Leeds", "Bristol", "York", "Bath", "Leicester", "Oxford", "Derby", "Cardiff"),
    "us": ("Austin", "Denver", "Boston", "Fresno", "Tampa", "Reno", "Omaha", "Dayton"),
    "de": ("Berlin", "Bonn", "Köln", "Essen", "Kiel", "Mainz", "Ulm", "Trier"),
}
US_STATES = ("TX", "CO", "MA", "CA", "FL", "NV", "NE", "OH")


def address(rng: random.Random) -> str:
    country = rng.choice(tuple(CITIES))
    city, street, number = rng.choice(CITIES[country]), rng.choice(STREETS), rng.randint(1, 250)
    if country == "in":
        return f"{number} {street}, {city} {rng.randint(110001, 799999)}"
    if country == "uk":
        letters = "".join(rng.choices(string.ascii_uppercase, k=2))
        return f"{number} {street}, {city} {letters}{rng.randint(1, 20)} {rng.randint(1, 9)}{letters[::-1]}"
    if country == "us":
        return f"{number} {street}, {city} {rng.choice(US_STATES)} {rng.randint(10000, 99999)}"
    return f"{street} {number}, {rng.randint(10000, 99999)} {city}"


# -----------------------------------------------------------------------------
# identifiers

PAN_HOLDER_TYPES = "PPPPPPCHFATBLJG"   # the 4th letter of an Indian PAN: P (person) is by far the most common


def pan(rng: random.Random, surname: str = "") -> str:
    """PAN-style tax id `ABCDE1234F`: 3 letters, holder type, first letter of the surname, 4 digits, 1 letter."""
    initial = surname[:1].upper() if surname[:1].isascii() and surname[:1].isalpha() else rng.choice(string.ascii_uppercase)
    return ("".join(rng.choices(string.ascii_uppercase, k=3)) + rng.choice(PAN_HOLDER_TYPES) + initial
            + f"{rng.randint(0, 9999):04d}" + rng.choice(string.ascii_uppercase))


def phone(rng: random.Random) -> str:
    digits = lambda k: "".join(rng.choices(string.digits, k=k))
    style = rng.randrange(5)
    if style == 0:
        return f"+91 {rng.choice('6789')}{digits(4)} {digits(5)}"
    if style == 1:
        return f"0{rng.choice('6789')}{digits(4)} {digits(5)}"
    if style == 2:
        return f"+44 7{digits(3)} {digits(6)}"
    if style == 3:
        return f"+1 ({rng.randint(201, 989)}) {digits(3)}-{digits(4)}"
    return f"+49 1{digits(2)} {digits(7)}"


def account_number(rng: random.Random) -> str:
    length = rng.choice((10, 11, 12, 14, 16))
    number = str(rng.randint(1, 9)) + "".join(rng.choices(string.digits, k=length - 1))
    if rng.random() < 0.4:   # some banks print it in groups of four
        return " ".join(number[i:i + 4] for i in range(0, length, 4))
    return number


def reference(rng: random.Random, prefix: str) -> str:
    return f"{prefix}-{rng.randint(2019, 2026)}-{rng.randint(0, 999999):06d}"


def _isin_check_digit(body: str) -> str:
    """ISO 6166: letters become two digits (A=10 ... Z=35), then the Luhn check over the digit string."""
    digits = "".join(str(int(c, 36)) for c in body)
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n // 10 + n % 10
    return str((10 - total % 10) % 10)


def isin(rng: random.Random) -> str:
    """An ISIN-like code with a valid check digit, e.g. INE002A01018 or US0378331005."""
    country = rng.choice(("IN", "IN", "US", "GB", "DE", "JP", "FR"))
    if country == "IN":
        body = "INE" + "".join(rng.choices(string.digits, k=3)) + rng.choice(string.ascii_uppercase) + "0" \
               + rng.choice("12") + "0" + rng.choice(string.digits)
    else:
        body = country + "".join(rng.choices(string.digits + string.ascii_uppercase[:6], k=9))
    return body + _isin_check_digit(body)


def is_valid_isin(code: str) -> bool:
    return len(code) == 12 and code[:2].isalpha() and code[-1] == _isin_check_digit(code[:-1])


COMPANY_WORDS = ("Bharat", "Sunrise", "Northwind", "Orion", "Kaveri", "Atlas", "Zenith", "Meridian", "Lotus",
                 "Pacific", "Everest", "Ganga", "Silverline", "Apex", "Harbour", "Sapphire", "Crescent", "Vertex")
SECTORS = ("Steel", "Power", "Textiles", "Pharma", "Motors", "Bank", "Energy", "Foods", "Cement", "Software",
           "Chemicals", "Telecom", "Finance", "Logistics")
COMPANY_SUFFIXES = ("Ltd", "Ltd", "Plc", "Inc", "AG", "SA", "Corp")


def security_name(rng: random.Random) -> str:
    if rng.random() < 0.15:   # a government bond: "GOI 7.26% 2033"
        return f"{rng.choice(('GOI', 'UST', 'GILT', 'BUND'))} {rng.randint(1, 8)}.{rng.randint(0, 99):02d}% {rng.randint(2027, 2045)}"
    return f"{rng.choice(COMPANY_WORDS)} {rng.choice(SECTORS)} {rng.choice(COMPANY_SUFFIXES)}"


# -----------------------------------------------------------------------------
# numbers

def quantity(rng: random.Random) -> int:
    return rng.choice((rng.randint(1, 99), rng.randint(1, 200) * 5, rng.randint(1, 100) * 50, rng.randint(100, 9999)))


def price_cents(rng: random.Random) -> int:
    return rng.choice((rng.randint(100, 9999), rng.randint(1000, 99999), rng.randint(10000, 499999)))


def money(cents: int, grouped: bool = True) -> str:
    """12345678 -> "123,456.78" (or "123456.78"); negative amounts keep their minus sign."""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    return f"{sign}{units:,}.{rest:02d}" if grouped else f"{sign}{units}.{rest:02d}"


def count(n: int, grouped: bool = True) -> str:
    return f"{n:,}" if grouped else str(n)


# -----------------------------------------------------------------------------
# dates and times

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December")
# the format a form asks for ("Date (DD/MM/YYYY)") -> how to write a date in it
DATE_FORMATS = {
    "DD/MM/YYYY": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",
    "YYYY-MM-DD": lambda d: d.isoformat(),
    "DD-MMM-YYYY": lambda d: f"{d.day:02d}-{MONTHS[d.month - 1]}-{d.year}",
    "DD.MM.YYYY": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "MM/DD/YYYY": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
}
# written by people who ignore the requested format: these never match any of DATE_FORMATS
OFF_FORMAT_DATES = (
    lambda d: f"{d.day} {MONTH_NAMES[d.month - 1]} {d.year}",
    lambda d: f"{d.day}/{d.month}/{d.year % 100:02d}",
    lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    lambda d: f"{MONTH_NAMES[d.month - 1][:3]} {d.day}, {d.year}",
)
DATE_PATTERNS = {   # regular expressions of each requested format, to check a written date
    "DD/MM/YYYY": r"(0[1-9]|[12]\d|3[01])/(0[1-9]|1[0-2])/\d{4}",
    "YYYY-MM-DD": r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    "DD-MMM-YYYY": r"(0[1-9]|[12]\d|3[01])-(" + "|".join(MONTHS) + r")-\d{4}",
    "DD.MM.YYYY": r"(0[1-9]|[12]\d|3[01])\.(0[1-9]|1[0-2])\.\d{4}",
    "MM/DD/YYYY": r"(0[1-9]|1[0-2])/(0[1-9]|[12]\d|3[01])/\d{4}",
}


def date_between(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rng.randint(0, (end - start).days))


def birth_date(rng: random.Random) -> dt.date:
    return date_between(rng, dt.date(1945, 1, 1), dt.date(2006, 12, 31))


def recent_date(rng: random.Random) -> dt.date:
    return date_between(rng, dt.date(2019, 1, 1), dt.date(2026, 10, 31))


def write_date(date: dt.date, date_format: str) -> str:
    return DATE_FORMATS[date_format](date)


def off_format_date(rng: random.Random, date: dt.date) -> str:
    return rng.choice(OFF_FORMAT_DATES)(date)


def matches_format(text: str, date_format: str) -> bool:
    return re.fullmatch(DATE_PATTERNS[date_format], text) is not None


def time_of_day(rng: random.Random) -> str:
    """Market hours, as trade confirmations print them: "14:32:05", "09:15" or "2:45 PM"."""
    seconds = rng.randint(9 * 3600 + 15 * 60, 15 * 3600 + 30 * 60)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    style = rng.randrange(3)
    if style == 0:
        return f"{h:02d}:{m:02d}:{s:02d}"
    if style == 1:
        return f"{h:02d}:{m:02d}"
    return f"{(h - 1) % 12 + 1}:{m:02d} {'AM' if h < 12 else 'PM'}"


TRANSACTION_TEXTS = ("NEFT Salary", "UPI Grocery", "ATM Withdrawal", "Card Fuel", "Rent Transfer", "Interest",
                     "UPI Restaurant", "Electricity Bill", "Insurance Premium", "Refund", "Dividend", "Cheque Deposit",
                     "Mobile Recharge", "Card Online Shop")
