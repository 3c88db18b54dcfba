"""The dataset card ``DIR/README.md``: Hugging Face's YAML front matter, so that
``datasets.load_dataset(DIR)`` (or the Hub, after a push) gives the ``data`` and ``rejected``
splits, and a body stating how the data was made: the spec, the model, the methods, the filters
with their counts, the package versions and the date."""

from __future__ import annotations

from datetime import UTC, datetime

import jinja2
import yaml

from gen.report.measures import Measures, engine_names
from gen.storage import Location

CARD = "README.md"
SPLITS = ("data", "rejected")
MIN_LANGUAGE_SHARE = 0.01  # a language of fewer kept records is noise of the identifier, not the data's
# Hugging Face's size_categories: the upper bound of each bucket and its name.
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(records: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if records < bound), "n>1B")


def write_card(m: Measures) -> Location:
    """The splits name their shards one by one, not by a ``data/*.parquet`` pattern: ``datasets``
    caches a local dir by its name and its card's config, not by the files' content, so with a
    pattern a second output dir named ``out`` loads the first one's cached rows. Shard names hold
    their run's random writer token, so every run's card is its own."""
    spec = m.manifest.get("spec", {})
    card = spec.get("card", {})
    totals = m.manifest.get("totals", {})
    front = {
        "configs": [{"config_name": "default", "data_files": [
            {"split": split, "path": shards} for split in SPLITS
            if (shards := [f"{split}/{shard.name}" for shard in m.root.child(split).files(".parquet")])]}],
        "license": card.get("license", "unknown"),
        **({"language": language} if (language := card.get("language") or _languages(m)) else {}),
        "task_categories": card.get("task_categories", ["text-generation"]),
        "size_categories": [size_category(totals.get("records", 0))],
        "tags": ["synthetic", "sdg"],
        **({"pretty_name": card["pretty_name"]} if card.get("pretty_name") else {}),
    }
    environment = jinja2.Environment(loader=jinja2.PackageLoader("gen.report", ""), keep_trailing_newline=True)
    text = environment.get_template("card.md.j2").render(
        front_matter=yaml.safe_dump(front, sort_keys=False), title=card.get("pretty_name") or m.root.name,
        model=", ".join(engine_names(spec)) or "unknown", date=datetime.now(UTC).strftime("%Y-%m-%d"),
        totals=totals, status=m.manifest.get("status", "unknown"),
        sampling={name: value for name, value in spec.get("sampling", {}).items() if value is not None},
        stages=spec.get("stages", []), filters=spec.get("filters", []), drops=m.drops,
        seeds=m.manifest.get("seeds", {}).get("read"), seed_paths=(spec.get("seeds") or {}).get("paths", []),
        versions=m.manifest.get("versions", {}), spec_yaml=yaml.safe_dump(spec, sort_keys=False))
    card_file = m.root.child(CARD)
    card_file.write_bytes(text.encode())
    return card_file


def _languages(m: Measures) -> list[str]:
    kept = sum(len(scores) for scores in m.language_scores.values())
    return [lang for lang, scores in m.language_scores.items() if len(scores) >= MIN_LANGUAGE_SHARE * kept]
