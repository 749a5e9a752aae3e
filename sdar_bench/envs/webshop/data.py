"""Loader for WebShop's own JSON files, so the same engine plays the real catalogue.

Files read from ``data_dir`` (WebShop's ``data/`` folder, or any folder with the same files):

* products: the first of ``items_shuffle_1000.json``, ``items_shuffle.json``, ``products.json``:
  a JSON list of scraped products. Fields used: ``asin``; ``name`` (or ``Title``);
  ``product_category`` (path with "›"); ``category`` and ``query``; ``pricing`` ("$12.99",
  "$10.00 - $20.00" or a list of numbers: the first price counts, as in WebShop);
  ``customization_options`` ({name: [{"value": ...}, ...]}, values lower-cased and "/" → " | "
  as WebShop's ``load_products`` does); ``small_description`` (or ``BulletPoints``);
  ``full_description`` (or ``Description``); ``attributes`` (or ``Attributes``), else the
  ``attributes`` of that asin in ``items_ins_v2_1000.json`` / ``items_ins_v2.json``.
  Products with a missing or duplicate asin are skipped, as WebShop skips them.
* goals: ``goals.json``, a JSON list of goal dicts as WebShop's ``get_goals`` builds them.
  Fields used: ``asin``, ``instruction_text``, ``attributes``, ``goal_options`` (a list of
  values or a {name: value} dict), ``price_upper``; ``query``, ``name`` and
  ``product_category`` default to the target product's. Goals whose asin is not among the
  products are dropped (WebShop keeps only goals of loaded products).

Each product gets one of the seven task types from its ``category`` / ``product_category``
words (``category_of``); a goal's task type is its target product's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sdar_bench.envs.webshop.catalog import Goal, Product

PRODUCT_FILES = ("items_shuffle_1000.json", "items_shuffle.json", "products.json")
ATTRIBUTE_FILES = ("items_ins_v2_1000.json", "items_ins_v2.json")
GOAL_FILE = "goals.json"

# Task type by keyword (a word or its plural), tried on the most specific path level first ("Clothing, Shoes & Jewelry ›
# Women › Shoes › Sandals" is footwear, "… › Clothing › Hoodies" apparel); in each level the
# types are tried in this order, then WebShop's own ``category`` (beauty, electronics, fashion,
# food, furniture) decides.
CATEGORY_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("footwear", ("shoe", "boot", "sandal", "sneaker", "slipper", "loafer", "heel", "flip flop")),
    ("accessories", ("jewelry", "watch", "wallet", "handbag", "luggage", "sunglass", "belt")),
    ("apparel", ("clothing", "fashion", "shirt", "dress", "pants", "hoodie", "sweater", "coat")),
    ("beauty_health", ("beauty", "health", "personal care", "hair", "skin", "makeup", "fragrance")),
    ("electronics", ("electronic", "computer", "phone", "camera", "headphone", "audio", "video")),
    ("home_decor", ("home", "kitchen", "furniture", "decor", "bedding", "bath", "garden")),
    ("other", ("grocery", "food", "pet", "toy", "office", "sport")),
)


def category_of(category: str, product_category: str) -> str:
    """One of the seven task types, from WebShop's ``category`` and ``product_category``."""
    levels = [x.strip().lower() for x in product_category.split("›")][::-1]
    for level in [*levels, category.lower()]:
        for task_type, keywords in CATEGORY_KEYWORDS:
            if any(_mentions(level, k) for k in keywords):
                return task_type
    return "other"


def _mentions(text: str, keyword: str) -> bool:
    """``keyword`` as a word or its plural ("shoe" in "shoes", not "dress" in "dressings")."""
    if " " in keyword:
        return keyword in text
    return any(
        w.startswith(keyword) and len(w) - len(keyword) <= 2 for w in re.findall(r"[a-z]+", text)
    )


def _first(path: Path, names: tuple[str, ...]) -> Path | None:
    return next((path / n for n in names if (path / n).is_file()), None)


def _price(pricing: Any) -> float:
    """WebShop's parse: the first of the "$"-separated prices; 100.0 when there is none."""
    if isinstance(pricing, int | float):
        return float(pricing)
    if isinstance(pricing, list):
        return float(pricing[0]) if pricing else 100.0
    prices = [re.sub(r"[^\d.]", "", p) for p in str(pricing or "").split("$")[1:]]
    prices = [p for p in prices if p]
    return float(prices[0]) if prices else 100.0


def _options(raw: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    options: list[tuple[str, tuple[str, ...]]] = []
    for name, contents in (raw or {}).items():
        if not contents:
            continue
        values = [
            str(c["value"] if isinstance(c, dict) else c).strip().replace("/", " | ").lower()
            for c in contents
        ]
        options.append((name.lower(), tuple(dict.fromkeys(v for v in values if v))))
    return tuple(options)


def _text_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


def _product(raw: dict[str, Any], attributes: dict[str, Any]) -> Product:
    asin = str(raw["asin"])
    attrs = raw.get("attributes", raw.get("Attributes"))
    if attrs is None:
        attrs = attributes.get(asin, {}).get("attributes", [])
    category = str(raw.get("category", ""))
    path = str(raw.get("product_category", ""))
    return Product(
        asin=asin.lower(),
        title=str(raw.get("name", raw.get("Title", ""))).strip(),
        category=category_of(category, path),
        product_category=path,
        query=str(raw.get("query", "")).lower().strip(),
        price=_price(raw.get("pricing")),
        options=_options(raw.get("customization_options")),
        attributes=tuple(str(a) for a in attrs),
        bullets=_text_list(raw.get("small_description", raw.get("BulletPoints"))),
        description=str(raw.get("full_description", raw.get("Description", "")) or ""),
    )


def load_products(data_dir: Path) -> tuple[Product, ...]:
    path = _first(data_dir, PRODUCT_FILES)
    if path is None:
        raise ValueError(
            f"no WebShop product file ({' or '.join(PRODUCT_FILES)}) in {data_dir}: set the "
            "webshop env parameter data_dir to WebShop's data folder"
        )
    attr_path = _first(data_dir, ATTRIBUTE_FILES)
    attributes = json.loads(attr_path.read_text()) if attr_path else {}
    products: dict[str, Product] = {}
    for raw in json.loads(path.read_text()):
        asin = str(raw.get("asin", ""))
        if not asin or asin == "nan" or len(asin) > 10 or asin.lower() in products:
            continue
        product = _product(raw, attributes)
        products[product.asin] = product
    return tuple(products.values())


def load_goals(data_dir: Path, products: tuple[Product, ...]) -> tuple[Goal, ...]:
    path = data_dir / GOAL_FILE
    if not path.is_file():
        raise ValueError(
            f"no WebShop goal file {GOAL_FILE} in {data_dir}: set the webshop env parameter "
            "data_dir to a folder holding it (a JSON list of WebShop goal dicts)"
        )
    by_id = {p.asin: p for p in products}
    goals = []
    for raw in json.loads(path.read_text()):
        asin = str(raw["asin"]).lower()
        target = by_id.get(asin)
        if target is None:
            continue  # WebShop only keeps goals whose product it loaded
        options = raw.get("goal_options") or []
        names: tuple[str, ...] = ()
        if isinstance(options, dict):
            names = tuple(str(k).lower() for k in options)
            options = list(options.values())
        goals.append(
            Goal(
                asin=asin,
                instruction=str(raw["instruction_text"]).strip(),
                attributes=tuple(str(a) for a in raw.get("attributes", [])),
                options=tuple(str(o).lower() for o in options),
                price_upper=float(raw.get("price_upper", 1_000_000.0)),
                query=str(raw.get("query", target.query)).lower().strip(),
                name=str(raw.get("name", target.title)),
                product_category=str(raw.get("product_category", target.product_category)),
                category=target.category,
                option_names=names,
            )
        )
    if not goals:
        raise ValueError(f"{path} holds no goal whose asin is in the product file")
    return tuple(goals)


def load_webshop(data_dir: str | Path) -> tuple[tuple[Product, ...], tuple[Goal, ...]]:
    """(products, goals) from WebShop's files; one clear ValueError when they are missing."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"WebShop data_dir {str(path)!r} does not exist: set the webshop env parameter "
            "data_dir to WebShop's data folder (items_shuffle.json and goals.json), or leave it "
            "unset to play the offline catalogue"
        )
    products = load_products(path)
    return products, load_goals(path, products)
