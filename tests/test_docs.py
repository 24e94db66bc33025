"""docs/model.md covers the recipe: every key of the schema is named there, and the literal recipe says which
readings it takes."""

from __future__ import annotations

import re

from pfanet_cli.config import load_recipe, valid_keys
from tests.helpers import REPO


def test_every_recipe_key_appears_in_docs_model_md():
    docs = (REPO / "docs" / "model.md").read_text(encoding="utf-8")
    missing = [key for key in valid_keys() if not re.search(r"`" + re.escape(key) + r"(`|[:= ])", docs)]
    assert not missing, f"recipe keys docs/model.md does not name: {', '.join(missing)}"


def test_the_literal_recipe_trains_on_the_papers_296_ids_and_names_its_readings():
    recipe = load_recipe("sysu_pfanet_literal.yaml")
    assert recipe.data.root == "data/prepared/sysu_296" and recipe.joint.validate_every > 0
    assert (recipe.model.bng_placement, recipe.model.gam_ratio, recipe.model.gam_groups) == ("stages", 4, 1)
    text = (REPO / "recipes" / "sysu_pfanet_literal.yaml").read_text(encoding="utf-8")
    assert "--train-split train --out data/prepared/sysu_296" in text and "model.gam_ratio=16" in text
    docs = " ".join((REPO / "docs" / "model.md").read_text(encoding="utf-8").split())
    assert "the `best.pt` of a validated run is a model trained on the 296 training identities only" in docs
