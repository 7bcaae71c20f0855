"""Names the params refer to: datasets and methods."""

from __future__ import annotations

from r2ec import methods as _methods

AMAZON_CATEGORIES = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food",
    "Handmade_Products", "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV",
    "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Software",
    "Sports_and_Outdoors", "Subscription_Boxes", "Tools_and_Home_Improvement", "Toys_and_Games",
    "Video_Games", "Unknown",
)
MOVIELENS = "movielens-100k"
# the built-in methods by kind, from the method registry (r2ec.methods); plugins add to the registry, so checks
# of a params list call r2ec.methods.names() when they run instead of reading these
CLASSIC_METHODS = _methods.names("classic")
R2EC_VARIANTS = _methods.names("r2ec")
TIGER = "tiger"  # generative retrieval over semantic IDs (r2ec.baselines.tiger)
REFERENCE_METHODS = _methods.names("reference")  # floors of Table 1 (r2ec.baselines.reference)
LLM_BASELINES = _methods.names("llm")  # LLM baselines on the shared harness: what `llm_baselines` may list
BASELINE_METHODS = _methods.names("reference", "classic", "generative")  # what `baselines` may list
METHODS = _methods.names()
CONTRASTIVE_METHOD = "r2ec_no_reasoning"  # trained as its own stage: a Table 1 row and the warm start source
