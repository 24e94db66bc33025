"""The protocol card: what extraction records (the checkpoint and how it was chosen), what travels in a
features file, how several results' cards are shown, and the card `pfanet evaluate --checkpoint` prints."""

from __future__ import annotations

import json

import numpy as np
import torch

from pfanet_cli.cli import main
from pfanet_cli.evaluation.card import FLIP, card_rows, checkpoint_choice, complete_card, extraction_provenance
from pfanet_cli.evaluation.extract import extract_split
from pfanet_cli.evaluation.features import read_provenance, save_feature_set, save_features

SELECTION = {"rule": "best val mAP", "metric": "mAP", "value": 12.345, "global_iteration": 40, "split": "val"}


def test_how_a_checkpoint_was_chosen():
    assert checkpoint_choice({}).startswith("last")
    assert checkpoint_choice({"selection": SELECTION}) == "best val mAP (mAP = 12.35 on the val split at iteration 40)"
    provenance = extraction_provenance("runs/x/best.pt", {"stage": "train-joint", "iteration": 7, "selection": SELECTION,
                                                          "recipe": {"joint": {"triplet_feature": "pooled"}}},
                                       translate=True, split="the test split of data/prepared/sysu")
    assert provenance["checkpoint"] == {"path": "runs/x/best.pt", "chosen": checkpoint_choice({"selection": SELECTION}),
                                        "stage": "train-joint", "iteration": 7}
    assert provenance["flip"].startswith(FLIP) and "translated to fake IR by G_I" in provenance["flip"]
    assert provenance["feature"].startswith("pooled v") and "triplet_feature = pooled" in provenance["feature"]
    # the method and the augmentation F was trained with, from the checkpoint's recipe (its missing keys: defaults)
    assert provenance["method"] == ("PFANet: F resnet50 (ImageNet) with BNG and MMM; generators G_I, G_R and the "
                                    "joint discriminator")
    assert provenance["augmentation"] == "horizontal flip; zero padding 10 + random crop"
    caj = {"model": {"method": "agw", "backbone": "resnet18", "pretrained": "none"}, "agw": {"triplet": "adp"},
           "data": {"erasing": 0.5, "channel_exchange": 1.0, "rgb_views": 2, "ir_adaptive_gray": True}}
    provenance = extraction_provenance("x.pt", {"stage": "train-agw", "recipe": caj}, translate=True,
                                       agw_test=("fc", True))
    assert provenance["method"].startswith("AGW: two-stream resnet18 (from scratch;")
    assert "CAJ's TripletLoss_ADP" in provenance["method"] and "1 channel" in provenance["method"]
    assert provenance["augmentation"] == (
        "horizontal flip; zero padding 10 + random crop; random erasing p 0.5 (area 0.02-0.4, aspect 0.3-3.33, fill "
        "(0.4914, 0.4822, 0.4465) of the ImageNet-normalised image); two independently augmented views of every RGB "
        "image (CAJ); channel exchange p 1 on the second RGB view (CAJ's ChannelExchange(gray=2)); "
        "ChannelAdapGray(0.5) on the IR images (CAJ)")
    assert provenance["feature"].startswith("fc: AGW's BN-neck") and "CAJ's testa.py" in provenance["flip"]
    assert "method" not in extraction_provenance("x.pt", {"recipe": {"no_such_section": 1}}, translate=True)


def test_the_provenance_travels_in_the_features_file(tmp_path):
    path = save_features(tmp_path / "f.npz", np.eye(3, dtype=np.float32), [1, 2, 3], [1, 3, 1], ["a", "b", "c"],
                         provenance={"flip": FLIP, "checkpoint": {"path": "x.pt", "chosen": "last"}})
    assert read_provenance(path) == {"flip": FLIP, "checkpoint": {"path": "x.pt", "chosen": "last"}}
    plain = save_features(tmp_path / "g.npz", np.eye(3, dtype=np.float32), [1, 2, 3], [1, 3, 1], ["a", "b", "c"])
    assert read_provenance(plain) is None


def test_cards_of_several_results_show_each_differing_value_once():
    common = {"dataset": "SYSU-MM01", "trials": 10, "rerank": "off"}
    rows = dict(card_rows([{**common, "mode": "all-search"}, {**common, "mode": "indoor-search"},
                           {**common, "mode": "indoor-search"}]))
    assert rows["mode"] == "all-search | indoor-search" and rows["trials"] == "10"
    assert rows["checkpoint"] == "not recorded" and rows["flip"] == "not recorded"
    assert list(complete_card(common)) == ["dataset", "split", "trials", "rerank", "flip", "feature", "method",
                                           "augmentation", "checkpoint"]


def test_extraction_states_the_checkpoint_and_how_it_was_chosen(trained, tmp_path, capsys):
    result = extract_split(trained["joint"], trained["prep"])
    assert result.provenance["checkpoint"]["path"] == str(trained["joint"])
    assert result.provenance["checkpoint"]["chosen"].startswith("last")
    assert result.provenance["split"] == f"the test split of {trained['prep']}"
    save_feature_set(tmp_path / "f.npz", result)
    assert read_provenance(tmp_path / "f.npz") == json.loads(json.dumps(result.provenance))

    payload = torch.load(trained["joint"], weights_only=True)
    payload["selection"] = SELECTION
    best = tmp_path / "best.pt"
    torch.save(payload, best)
    out = tmp_path / "r.json"
    code = main(["evaluate", "--checkpoint", str(best), "--data", str(trained["prep"]), "--device", "cpu",
                 "--trials", "1", "--sampler", "agw", "--json", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    card = json.loads(out.read_text())["card"]
    assert card["checkpoint"]["path"] == str(best) and card["checkpoint"]["chosen"].startswith("best val mAP")
    assert "features_file" not in card and card["flip"].startswith("flip-summed")
    assert card["feature"].startswith("pooled v") and card["split"].startswith("SYSU-MM01 test ids")
    assert "best val mAP" in " ".join(stdout.split())
