"""The offline WebShop catalogue and its goals, generated from a seed alone.

Seven product categories (the SDAR paper's WebShop breakdown), ten product types each. A product
is drawn from its type's closed word lists (brand, audience, attributes, option values, price
range), so the catalogue's vocabulary stays bounded: it becomes a tiny model's word-level
vocabulary. Goals are phrased as WebShop's ("i need a soft cotton hoodie in red color and size
large, and price lower than 40.00 dollars") and target one product: a subset of its attributes,
one value of each of its options and a price bound drawn as WebShop draws it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

# ---- records shared with the real-data loader ------------------------------------------------


@dataclass(frozen=True)
class Product:
    """One product, with the fields WebShop's engine and reward read."""

    asin: str  # the clickable id, lower-case ("b0a1c2"; real data: "b09qkp7xql")
    title: str  # WebShop's ``name`` / ``Title``
    category: str  # one of CATEGORIES: the task type
    product_category: str  # WebShop's path, levels separated by " › "
    query: str  # the search query the product was listed under (WebShop's ``query``)
    price: float
    options: tuple[tuple[str, tuple[str, ...]], ...]  # (option name, values) in display order
    attributes: tuple[str, ...]
    bullets: tuple[str, ...]  # WebShop's ``BulletPoints`` (the features page)
    description: str

    def option_values(self) -> list[tuple[str, str]]:
        """Every (option name, value) pair, in display order."""
        return [(name, value) for name, values in self.options for value in values]


@dataclass(frozen=True)
class Goal:
    """What a task asks for: WebShop's goal dict, reduced to the fields the reward reads."""

    asin: str  # the product the goal was written for (the expert buys it)
    instruction: str  # WebShop's ``instruction_text``
    attributes: tuple[str, ...]
    options: tuple[str, ...]  # WebShop's ``goal_options`` values
    price_upper: float
    query: str  # the target's ``query``
    name: str  # the target's title
    product_category: str
    category: str  # the task type
    option_names: tuple[str, ...] = field(default=(), compare=False)  # "" where unknown


# ---- the closed word lists -------------------------------------------------------------------
CATEGORIES: tuple[str, ...] = (
    "apparel",
    "footwear",
    "home_decor",
    "electronics",
    "accessories",
    "beauty_health",
    "other",
)
CATEGORY_PATHS: dict[str, str] = {
    "apparel": "clothing",
    "footwear": "shoes",
    "home_decor": "home and kitchen",
    "electronics": "electronics",
    "accessories": "accessories",
    "beauty_health": "beauty and personal care",
    "other": "everyday goods",
}

BRANDS: tuple[str, ...] = (
    "alpine", "atlas", "aurora", "cedar", "coral", "echo", "ember", "harbor", "luna", "maple",
    "nova", "orbit", "pioneer", "summit", "urban", "velvet", "vista", "willow", "zenith", "solace",
)  # fmt: skip

COLORS = ("black", "white", "navy blue", "grey", "red", "green", "beige", "pink")
SIZES = ("small", "medium", "large", "x large")
SHOE_SIZES = ("6", "7", "8", "9", "10", "11")
SCENTS = ("vanilla", "lavender", "citrus", "rose", "ocean breeze", "coconut")
ADULTS = ("men", "women")


@dataclass(frozen=True)
class TypeSpec:
    """A product type: its name, grammar, attribute pool, option pools and price range."""

    name: str
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]
    price: tuple[int, int]  # whole dollars, inclusive
    plural: bool = False
    audiences: tuple[str, ...] = ()


def _t(
    name: str,
    attributes: str,
    options: dict[str, tuple[str, ...]],
    price: tuple[int, int],
    plural: bool = False,
    audiences: tuple[str, ...] = (),
) -> TypeSpec:
    """Shorthand: attributes as one comma-separated string."""
    attrs = tuple(a.strip() for a in attributes.split(","))
    return TypeSpec(name, attrs, tuple(options.items()), price, plural, audiences)


_CS = {"color": COLORS, "size": SIZES}
TYPES: dict[str, tuple[TypeSpec, ...]] = {
    "apparel": (
        _t("shirt", "short sleeve, long sleeve, soft cotton, machine wash, slim fit", _CS, (9, 35), audiences=ADULTS),
        _t("hoodie", "fleece lined, machine wash, relaxed fit, drawstring hood, soft cotton", _CS, (18, 55), audiences=ADULTS),
        _t("jacket", "water resistant, zip up, fleece lined, lightweight, windproof", _CS, (25, 90), audiences=ADULTS),
        _t("dress", "short sleeve, midi length, floral print, elastic waist, machine wash", _CS, (15, 60), audiences=("women", "girls")),
        _t("jeans", "slim fit, high waist, stretch denim, straight leg, machine wash", _CS, (20, 70), True, ADULTS),
        _t("sweater", "cable knit, crew neck, soft wool, relaxed fit, long sleeve", _CS, (20, 65), audiences=ADULTS),
        _t("shorts", "quick dry, elastic waist, zip pockets, lightweight, stretch fabric", _CS, (10, 40), True, ADULTS),
        _t("leggings", "high waist, tummy control, stretch fabric, quick dry, squat proof", _CS, (12, 40), True, ("women", "girls")),
        _t("pajama set", "soft cotton, button down, long sleeve, machine wash, relaxed fit", _CS, (15, 50), audiences=ADULTS),
        _t("swimsuit", "quick dry, tummy control, adjustable straps, high waist, padded cups", _CS, (15, 55), audiences=("women", "girls")),
    ),
    "footwear": tuple(
        _t(name, attrs, {"color": ("black", "white", "brown", "grey", "navy blue", "tan"), "size": SHOE_SIZES}, price, True, ADULTS if adults else ("women",))
        for name, attrs, price, adults in (
            ("running shoes", "lightweight, breathable mesh, arch support, non slip, cushioned sole", (30, 95), True),
            ("sneakers", "lace up, rubber sole, breathable mesh, memory foam, slip on", (25, 85), True),
            ("boots", "waterproof, ankle high, rubber sole, warm lining, lace up", (35, 99), True),
            ("sandals", "open toe, arch support, adjustable straps, non slip, cushioned sole", (12, 45), True),
            ("slippers", "memory foam, warm lining, non slip, slip on, machine wash", (10, 35), True),
            ("loafers", "slip on, genuine leather, rubber sole, cushioned sole, lightweight", (28, 90), True),
            ("hiking boots", "waterproof, ankle support, rubber sole, breathable mesh, lace up", (40, 99), True),
            ("flip flops", "quick dry, non slip, arch support, lightweight, rubber sole", (8, 30), True),
            ("high heels", "pointed toe, ankle strap, cushioned sole, non slip, party style", (25, 80), False),
            ("ballet flats", "slip on, cushioned sole, foldable, lightweight, non slip", (18, 50), False),
        )
    ),
    "home_decor": (
        _t("throw pillow covers", "soft velvet, hidden zipper, living room, machine wash, modern style", {"color": COLORS, "size": ("16 x 16 inch", "18 x 18 inch", "20 x 20 inch")}, (9, 30), True),
        _t("table lamp", "bedside, touch control, dimmable, modern style, usb port", {"color": ("black", "white", "gold", "silver", "grey")}, (18, 70)),
        _t("wall clock", "silent, battery operated, modern style, large numbers, living room", {"color": ("black", "white", "gold", "silver", "walnut")}, (12, 45)),
        _t("area rug", "non slip, easy to clean, soft touch, living room, machine wash", {"color": ("beige", "grey", "navy blue", "green", "ivory"), "size": ("3 x 5 ft", "5 x 7 ft", "8 x 10 ft")}, (25, 99)),
        _t("curtains", "blackout, thermal insulated, grommet top, bedroom, machine wash", {"color": COLORS, "size": ("52 x 63 inch", "52 x 84 inch", "52 x 95 inch")}, (15, 50), True),
        _t("picture frame", "wall mounted, glass front, solid wood, table top, modern style", {"color": ("black", "white", "gold", "walnut"), "size": ("5 x 7 inch", "8 x 10 inch", "11 x 14 inch")}, (8, 35)),
        _t("candle holder", "clear glass, gold metal, table centerpiece, modern style, gift idea", {"color": ("gold", "silver", "black", "white")}, (10, 40)),
        _t("vase", "ceramic, handmade, modern style, table centerpiece, living room", {"color": ("white", "beige", "green", "grey", "pink"), "size": ("small", "medium", "large")}, (12, 55)),
        _t("wall art", "canvas print, ready to hang, living room, framed, modern style", {"size": ("12 x 16 inch", "16 x 24 inch", "24 x 36 inch")}, (15, 80)),
        _t("bed sheet set", "deep pocket, soft microfiber, machine wash, wrinkle free, breathable", {"color": COLORS, "size": ("twin", "full", "queen", "king")}, (20, 70)),
    ),
    "electronics": (
        _t("wireless earbuds", "noise cancelling, long battery life, water resistant, touch control, charging case", {"color": ("black", "white", "navy blue", "pink")}, (20, 99), True),
        _t("bluetooth speaker", "portable, waterproof, long battery life, deep bass, hands free calling", {"color": ("black", "grey", "red", "navy blue", "green")}, (20, 90)),
        _t("phone charger", "fast charging, usb c, wall plug, dual port, compact design", {"color": ("black", "white")}, (9, 35)),
        _t("usb cable", "fast charging, braided nylon, usb c, data transfer, durable", {"color": ("black", "white", "red", "grey"), "size": ("3 ft", "6 ft", "10 ft")}, (6, 20)),
        _t("power bank", "fast charging, portable, dual usb, led display, slim design", {"color": ("black", "white", "navy blue"), "size": ("10000 mah", "20000 mah", "26800 mah")}, (15, 60)),
        _t("hdmi cable", "high speed, 4k, gold plated, braided nylon, ethernet", {"size": ("3 ft", "6 ft", "10 ft", "15 ft")}, (6, 25)),
        _t("wireless mouse", "ergonomic, silent click, rechargeable, usb receiver, adjustable dpi", {"color": ("black", "white", "grey", "pink")}, (9, 40)),
        _t("keyboard", "wireless, backlit, ergonomic, quiet keys, rechargeable", {"color": ("black", "white", "grey")}, (20, 90)),
        _t("webcam", "1080p, built in microphone, auto focus, wide angle, privacy cover", {"color": ("black", "white")}, (20, 80)),
        _t("headphones", "noise cancelling, over ear, foldable, long battery life, built in microphone", {"color": ("black", "white", "navy blue", "red")}, (25, 99), True),
    ),
    "accessories": (
        _t("backpack", "water resistant, laptop compartment, large capacity, usb charging port, lightweight", {"color": COLORS}, (20, 70)),
        _t("wallet", "genuine leather, rfid blocking, slim design, card holder, gift box", {"color": ("black", "brown", "tan", "navy blue")}, (12, 50), audiences=ADULTS),
        _t("sunglasses", "polarized, uv protection, lightweight frame, retro style, metal frame", {"color": ("black", "brown", "gold", "silver")}, (12, 60), True, ADULTS),
        _t("watch band", "stainless steel, silicone, quick release, adjustable, sport style", {"color": ("black", "silver", "gold", "navy blue", "pink"), "size": ("38 mm", "42 mm", "44 mm")}, (8, 30)),
        _t("belt", "genuine leather, adjustable, metal buckle, gift box, casual style", {"color": ("black", "brown", "tan"), "size": SIZES}, (12, 40), audiences=ADULTS),
        _t("tote bag", "large capacity, canvas, zipper closure, shoulder bag, lightweight", {"color": COLORS}, (12, 45), audiences=("women",)),
        _t("baseball cap", "adjustable strap, soft cotton, uv protection, breathable, washed denim", {"color": COLORS}, (8, 28)),
        _t("scarf", "soft knit, warm winter, lightweight, cashmere feel, long length", {"color": COLORS}, (10, 35), audiences=ADULTS),
        _t("necklace", "sterling silver, gift box, adjustable chain, hypoallergenic, pendant", {"color": ("silver", "gold", "black")}, (15, 80), audiences=("women", "girls")),
        _t("earrings", "sterling silver, hypoallergenic, gift box, dangle, stud", {"color": ("silver", "gold", "black")}, (10, 60), True, ("women", "girls")),
    ),
    "beauty_health": (
        _t("perfume", "long lasting, for women, travel size, floral, gift set", {"scent": SCENTS, "size": ("1.7 fl oz", "3.4 fl oz")}, (20, 95)),
        _t("face serum", "vitamin c, hyaluronic acid, anti aging, sensitive skin, cruelty free", {"size": ("1 fl oz", "2 fl oz")}, (12, 60)),
        _t("shampoo", "sulfate free, dry hair, natural ingredients, hair growth, paraben free", {"scent": SCENTS, "size": ("8 fl oz", "16 fl oz")}, (8, 35)),
        _t("body lotion", "dry skin, fragrance free, shea butter, fast absorbing, paraben free", {"scent": SCENTS, "size": ("8 fl oz", "16 fl oz")}, (8, 30)),
        _t("lipstick", "long lasting, matte finish, cruelty free, moisturizing, waterproof", {"color": ("red", "pink", "nude", "coral", "plum")}, (8, 35)),
        _t("hair dryer", "fast drying, low noise, ionic, travel size, diffuser", {"color": ("black", "white", "pink", "red")}, (20, 90)),
        _t("nail polish", "quick dry, long lasting, non toxic, glossy finish, cruelty free", {"color": ("red", "pink", "nude", "coral", "plum", "black")}, (6, 25)),
        _t("face mask", "deep cleansing, hydrating, sensitive skin, natural ingredients, clay", {"size": ("pack of 5", "pack of 10", "pack of 20")}, (8, 30)),
        _t("toothpaste", "fluoride free, whitening, fresh breath, natural ingredients, sensitive teeth", {"flavor": ("mint", "cinnamon", "charcoal"), "size": ("pack of 2", "pack of 4")}, (6, 25)),
        _t("vitamin gummies", "sugar free, immune support, gluten free, for adults, non gmo", {"flavor": ("orange", "berry", "lemon"), "size": ("60 count", "120 count")}, (10, 40), True),
    ),
    "other": (
        _t("coffee beans", "whole bean, dark roast, medium roast, fair trade, organic", {"size": ("12 oz", "2 lb", "5 lb")}, (10, 45), True),
        _t("green tea", "organic, loose leaf, tea bags, antioxidant, non gmo", {"flavor": ("jasmine", "mint", "lemon", "peach"), "size": ("20 count", "100 count")}, (6, 30)),
        _t("protein bars", "high protein, gluten free, low sugar, keto friendly, non gmo", {"flavor": ("chocolate", "peanut butter", "vanilla", "berry"), "size": ("pack of 12", "pack of 24")}, (12, 45), True),
        _t("dog toy", "durable, squeaky, non toxic, chew toy, for small dogs", {"color": ("red", "green", "navy blue", "pink"), "size": ("small", "medium", "large")}, (6, 25)),
        _t("cat bed", "washable, soft plush, non slip bottom, self warming, calming", {"color": ("grey", "beige", "pink", "navy blue"), "size": ("small", "medium", "large")}, (15, 55)),
        _t("notebook", "hardcover, lined paper, spiral bound, thick paper, pocket size", {"color": COLORS}, (5, 20)),
        _t("gel pens", "quick dry, fine point, smooth writing, retractable, refillable", {"color": ("black", "navy blue", "red", "green"), "size": ("pack of 12", "pack of 24")}, (6, 25), True),
        _t("puzzle", "for adults, family game, gift idea, thick pieces, landscape", {"size": ("500 pieces", "1000 pieces")}, (10, 35)),
        _t("yoga mat", "non slip, extra thick, eco friendly, carrying strap, lightweight", {"color": COLORS}, (15, 60)),
        _t("water bottle", "bpa free, leak proof, insulated, stainless steel, dishwasher safe", {"color": COLORS, "size": ("24 oz", "32 oz", "40 oz")}, (10, 45)),
    ),
}  # fmt: skip

CENTS = (0, 49, 95, 99)
ATTRS_PER_PRODUCT = 3

BULLET_TEMPLATES: tuple[str, ...] = (
    "{attr}",
    "{attr} for daily use",
    "{attr} you will love",
)
DESCRIPTION_TEMPLATES: tuple[str, ...] = (
    "this {type} from {brand} is {attrs}.",
    "the {brand} {type} is {attrs}. a great gift for family and friends.",
    "{brand} makes this {type}: {attrs}. it comes with a money back guarantee.",
)
# WebShop-style instructions; {a} is "a "/"an "/"" and {attrs} the attributes before the type.
GOAL_TEMPLATES: tuple[str, ...] = (
    "i need {a}{attrs} {type}{opts}",
    "i am looking for {a}{attrs} {type}{opts}",
    "find me {a}{attrs} {type}{opts}",
    "i want to buy {a}{attrs} {type}{opts}",
    "i would like {a}{attrs} {type}{opts}",
)
PRICE_TEXT = ", and price lower than {bound:.2f} dollars"
# WebShop's ``PRICE_RANGE``: goal bounds are multiples of ten above the target's price.
PRICE_RANGE: tuple[float, ...] = tuple(10.0 * i for i in range(1, 100))
ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def option_phrase(name: str, value: str) -> str:
    """How a goal asks for one option: "red color", "size large", "vanilla scent"."""
    if name == "color":
        return f"{value} color"
    if name == "size":
        return f"size {value}"
    return f"{value} {name}"


def join_words(items: list[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def article(first_word: str, plural: bool) -> str:
    if plural:
        return ""
    return "an " if first_word[:1] in "aeiou" else "a "


def price_bound(rng: random.Random, price: float) -> float:
    """WebShop's draw: two of the first four multiples of ten above the price, the larger."""
    above = [p for p in PRICE_RANGE if p > price][:4]
    if len(above) < 2:
        return 1_000_000.0
    _, upper = sorted(rng.sample(above, 2))
    return upper


# ---- generation ------------------------------------------------------------------------------
def _type_specs() -> list[tuple[str, TypeSpec]]:
    """(category, type) pairs, category-interleaved so any prefix is balanced."""
    depth = max(len(v) for v in TYPES.values())
    return [(cat, TYPES[cat][i]) for i in range(depth) for cat in CATEGORIES if i < len(TYPES[cat])]


def _new_id(rng: random.Random, taken: set[str]) -> str:
    while True:
        asin = "b0" + "".join(rng.choice(ID_ALPHABET) for _ in range(4))
        if asin not in taken and not asin.isdigit():
            taken.add(asin)
            return asin


def _product(rng: random.Random, asin: str, category: str, spec: TypeSpec) -> Product:
    brand = rng.choice(BRANDS)
    audience = rng.choice(spec.audiences) if spec.audiences else ""
    attrs = tuple(rng.sample(spec.attributes, ATTRS_PER_PRODUCT))
    options = []
    for name, pool in spec.options:
        count = min(len(pool), rng.randint(2, 4))
        chosen = set(rng.sample(pool, count))
        options.append((name, tuple(v for v in pool if v in chosen)))
    lead = attrs[0]
    if lead.startswith("for "):
        words = [brand, audience, spec.name, lead]
    else:
        words = [brand, audience, lead, spec.name]
    title = " ".join(w for w in words if w)
    price = rng.randint(*spec.price) + rng.choice(CENTS) / 100
    bullets = tuple(rng.choice(BULLET_TEMPLATES).format(attr=a) for a in attrs)
    description = rng.choice(DESCRIPTION_TEMPLATES).format(
        type=spec.name, brand=brand, attrs=join_words(list(attrs[1:]))
    )
    path = " › ".join([CATEGORY_PATHS[category], audience or "all", spec.name])
    return Product(
        asin, title, category, path, spec.name, price, tuple(options), attrs, bullets, description
    )


def generate_catalog(seed: int, size: int) -> tuple[Product, ...]:
    """``size`` products, round-robin over the (category, type) pairs, from ``seed`` alone."""
    rng = random.Random(seed)
    specs = _type_specs()
    taken: set[str] = set()
    return tuple(_product(rng, _new_id(rng, taken), *specs[i % len(specs)]) for i in range(size))


def type_spec(product: Product) -> TypeSpec:
    return next(s for s in TYPES[product.category] if s.name == product.query)


def generate_goal(rng: random.Random, product: Product) -> Goal:
    """A WebShop-style goal for ``product``: 1–2 of its attributes, one value per option."""
    spec = type_spec(product)
    attrs = rng.sample(product.attributes, rng.choice((1, 2, 2)))
    chosen = [(name, rng.choice(values)) for name, values in product.options]
    before = [a for a in attrs if not a.startswith("for ")]
    after = [a for a in attrs if a.startswith("for ")]
    noun = spec.name + "".join(f" {a}" for a in after)
    lead = join_words(before) if before else ""
    parts = [option_phrase(name, value) for name, value in chosen]
    opts = " in " + " and ".join(parts) if parts else ""
    template = rng.choice(GOAL_TEMPLATES)
    text = template.format(
        a=article((lead or noun).split()[0], spec.plural),
        attrs=lead,
        type=noun,
        opts=opts,
    )
    bound = price_bound(rng, product.price)
    text = re.sub(r" +", " ", text) + PRICE_TEXT.format(bound=bound)
    return Goal(
        asin=product.asin,
        instruction=text,
        attributes=tuple(attrs),
        options=tuple(v for _, v in chosen),
        price_upper=bound,
        query=product.query,
        name=product.title,
        product_category=product.product_category,
        category=product.category,
        option_names=tuple(n for n, _ in chosen),
    )


def catalog_phrases() -> list[str]:
    """Every fixed phrase the generator can put into a product or a goal (for ``vocabulary``)."""
    texts: list[str] = [*BRANDS, *BULLET_TEMPLATES, *DESCRIPTION_TEMPLATES, *GOAL_TEMPLATES]
    texts += [PRICE_TEXT, "a an", *CATEGORIES]
    for specs in TYPES.values():
        for spec in specs:
            texts += [spec.name, *spec.attributes, *spec.audiences]
            for name, values in spec.options:
                texts += [name, *values, *(option_phrase(name, v) for v in values)]
    return texts
