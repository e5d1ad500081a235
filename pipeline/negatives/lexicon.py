"""Curated co-hyponym groups for text negatives, tried before WordNet.

Words inside one group are mutually exclusive alternatives of one kind: replacing one by another
makes a caption *false* for its image rather than a paraphrase. WordNet (pipeline/language.py)
extends these groups to words they miss, but its most frequent sense of a word is often not the
visual one ("table" is first a table of data), so common visual words are listed here.
"""

from __future__ import annotations

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white", "grey", "pink"),
    "size": ("small", "large", "big", "tiny", "huge"),
    "age": ("old", "young", "new"),
    "temperature": ("hot", "cold", "warm"),
    "mood": ("happy", "sad", "angry", "smiling", "crying", "laughing", "sleepy", "scared"),
    "light": ("light", "dark", "bright"),
    "texture": ("wooden", "metal", "plastic", "glass", "stone"),
    "pattern": ("striped", "spotted", "plain", "checkered"),
    "state": ("open", "closed", "empty", "full", "broken"),
    "length": ("long", "short"),
    "speed": ("fast", "slow"),
    "height": ("tall", "short"),
    "wetness": ("wet", "dry"),
}
# Size words that are each other's near-synonyms stay apart (big/large would be a paraphrase).
SAME_MEANING: tuple[frozenset[str], ...] = (frozenset({"big", "large"}), frozenset({"small", "tiny"}))

OBJECTS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "boy", "girl", "baby", "child", "person"),
    "animal": (
        "cat", "dog", "mouse", "rabbit", "tiger", "lion", "horse", "cow", "pig", "monkey", "bear", "panda",
        "fox", "wolf", "frog", "chicken", "bird", "penguin", "fish", "whale", "dolphin", "snake", "turtle",
        "owl", "eagle", "duck", "camel", "elephant", "giraffe", "zebra", "goat", "sheep", "octopus", "crab",
    ),
    "insect": ("bee", "ant", "butterfly", "beetle", "spider", "snail", "ladybird", "cricket"),
    "fruit": (
        "apple", "pear", "banana", "grapes", "melon", "watermelon", "cherries", "strawberry", "peach",
        "lemon", "pineapple", "mango", "coconut", "tangerine", "blueberries", "kiwifruit",
    ),
    "vegetable": ("carrot", "tomato", "potato", "eggplant", "cucumber", "broccoli", "corn", "onion", "garlic"),
    "food": ("pizza", "hamburger", "sandwich", "taco", "burrito", "bread", "cheese", "cake", "cookie", "doughnut"),
    "vehicle": (
        "car", "bus", "train", "bicycle", "truck", "taxi", "ambulance", "tractor", "motorcycle", "scooter",
        "airplane", "helicopter", "boat", "ship", "rocket", "tram",
    ),
    "shape": ("circle", "square", "triangle", "diamond", "heart", "star"),
    # WordNet's siblings of body parts read badly ("face" -> "breast"), so body parts come only from here.
    "body": ("hand", "foot", "ear", "nose", "eye", "mouth", "leg", "arm", "face", "head"),
    "clothing": ("hat", "shirt", "dress", "coat", "shoe", "boot", "glove", "scarf", "sock"),
    "instrument": ("guitar", "violin", "trumpet", "drum", "piano", "saxophone", "banjo"),
    "building": ("house", "castle", "church", "school", "hospital", "hotel", "office", "factory", "stadium"),
    "weather": ("sun", "moon", "cloud", "rain", "snow", "tornado", "rainbow", "lightning"),
    "plant": ("tree", "flower", "rose", "tulip", "cactus", "leaf", "mushroom", "sunflower"),
    "furniture": ("table", "chair", "bed", "sofa", "desk", "shelf", "bench"),
    "container": ("cup", "bowl", "bottle", "box", "basket", "bag", "jar", "glass"),
    "tool": ("hammer", "saw", "wrench", "screwdriver", "axe", "shovel", "scissors"),
    "ball": ("football", "basketball", "baseball", "tennis", "volleyball"),
}

# Relations: spatial prepositions, and verbs of posture, motion and handling. Verbs are lemmas;
# lemminflect puts the replacement in the original's form (riding -> pushing).
RELATIONS: dict[str, tuple[str, ...]] = {
    "position": ("on", "under", "above", "below", "behind", "beside", "inside", "near", "over"),
    "accompaniment": ("with", "without"),
    "direction": ("into", "onto", "toward", "from"),
    "posture": ("sit", "stand", "lie", "kneel", "lean"),
    "motion": ("walk", "run", "jump", "fly", "swim", "dance", "fall"),  # intransitive: no object follows
    "handling": ("hold", "throw", "catch", "carry", "kick", "push", "pull", "drop", "lift", "ride", "climb"),
    "consumption": ("eat", "drink", "smell", "bite"),
    "perception": ("look", "watch", "point"),
    "music": ("play", "sing", "whistle"),
}

# Spatial relations of several words, alternatives of the one-word "position" group and of each other.
RELATION_PHRASES: tuple[str, ...] = ("next to", "in front of", "on top of", "close to", "far from")

# Which attribute groups suit an object, by WordNet lexicographer file of the object's noun.
ATTRIBUTES_FOR: dict[str, tuple[str, ...]] = {
    "noun.person": ("mood", "age", "height"),
    "noun.animal": ("colour", "size", "mood"),
    "noun.artifact": ("colour", "size", "age", "state"),
    "noun.food": ("colour", "size", "temperature"),
    "noun.plant": ("colour", "size", "height"),
    "noun.object": ("colour", "size"),
    "noun.body": ("colour", "size"),
    "noun.shape": ("colour", "size"),
}


# The attribute kinds encoders are known to miss, each a closed set of words that exclude each
# other in an image: a red heart is not a blue heart. `(word, alternatives)`; the swap keeps the
# word's number (men -> women) because each plural maps to plurals.
COLOURS: tuple[str, ...] = ATTRIBUTES["colour"]
COUNTS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
COUNT_INVARIANT: frozenset[str] = frozenset({"oclock", "o'clock"})  # nouns a count leaves as they are (one oclock, two oclock)
GENDER: dict[str, tuple[str, ...]] = {
    a: (b,) for x, y in (
        ("man", "woman"), ("men", "women"), ("boy", "girl"), ("boys", "girls"), ("male", "female"),
        ("father", "mother"), ("king", "queen"), ("prince", "princess"), ("brother", "sister"),
        ("son", "daughter"), ("husband", "wife"), ("gentleman", "lady"),
    ) for a, b in ((x, y), (y, x))
}
AGE: dict[str, tuple[str, ...]] = {
    "old": ("young",), "young": ("old",), "older": ("younger",), "younger": ("older",),
    "man": ("boy",), "boy": ("man",), "woman": ("girl",), "girl": ("woman",),
    "men": ("boys",), "boys": ("men",), "women": ("girls",), "girls": ("women",),
    "adult": ("child", "baby"), "child": ("adult", "baby"), "baby": ("child", "adult"),
}
# Unicode's skin tone modifiers as emoji names write them ("waving hand: medium-dark skin tone").
SKIN_TONES: tuple[str, ...] = ("light", "medium-light", "medium", "medium-dark", "dark")


def index(groups: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """word -> its group (the first group a word appears in)."""
    out: dict[str, str] = {}
    for group, words in groups.items():
        for word in words:
            out.setdefault(word, group)
    return out


def same_meaning(a: str, b: str) -> bool:
    return any(a in s and b in s for s in SAME_MEANING)
