"""Cache schedules: which blocks are reused on which steps.

A schedule names, for each block list of a transformer (the attribute holding an `nn.ModuleList`, e.g.
`blocks` for Wan, `transformer_blocks` and `single_transformer_blocks` for HunyuanVideo):

- `background_blocks`: the blocks whose residual is cached and reused (the paper's "background-focused"
  blocks). They are grouped into maximal runs of consecutive indices; each run has one delta.
- `refresh_steps`: the steps (0-based, on a grid of `num_steps`) on which every block is computed and the
  deltas are refreshed. On all other steps the background runs are skipped and their delta is added.

The JSON format is documented in `docs/schedule-format.md`. Everything here is pure Python: a schedule
is checked against a model only when it is applied (`check_fits`).
"""

from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from .errors import ScheduleError

FORMAT_VERSION = 1
_TOP_LEVEL_KEYS = {"format_version", "name", "description", "num_steps", "block_lists", "forecast", "provenance"}
# What a reuse step adds: "hold" the delta of the last refresh (the paper's reuse), or "linear": extrapolate
# it along the line through the last two refreshes' deltas (docs/schedule-format.md).
FORECASTS = ("hold", "linear")
_BLOCK_LIST_KEYS = {"background_blocks", "refresh_steps", "num_blocks"}


def warmup_length(refresh_steps: Iterable[int]) -> int:
    """Length of the leading stretch 0, 1, 2, ... of `refresh_steps` (the warm-up)."""
    refresh = set(refresh_steps)
    count = 0
    while count in refresh:
        count += 1
    return count


@dataclass(frozen=True)
class BlockListSchedule:
    """The schedule of one block list."""

    background_blocks: tuple[int, ...]
    refresh_steps: tuple[int, ...]
    num_blocks: int | None = None  # depth the schedule was made for; checked against the model if given

    def __post_init__(self):
        # (files are checked with their JSON paths in _parse_block_list; this guards schedules built in code)
        for what, values in (("background_blocks", self.background_blocks), ("refresh_steps", self.refresh_steps)):
            if any(not _is_index(v) for v in values) or len(set(values)) != len(values):
                raise ScheduleError(f"{what} must be distinct integers >= 0, got {tuple(values)}")
            object.__setattr__(self, what, tuple(sorted(int(v) for v in values)))  # runs() needs them in order

    def runs(self) -> list[tuple[int, int]]:
        """Maximal runs of consecutive background blocks as inclusive (first, last) pairs."""
        runs: list[tuple[int, int]] = []
        for index in self.background_blocks:
            if runs and runs[-1][1] == index - 1:
                runs[-1] = (runs[-1][0], index)
            else:
                runs.append((index, index))
        return runs

    def warmup_steps(self) -> int:
        """Length of the leading stretch 0, 1, 2, ... of refresh steps (the warm-up)."""
        return warmup_length(self.refresh_steps)

    def refresh_steps_for(self, num_steps: int, schedule_steps: int) -> frozenset[int]:
        """Refresh steps of a run with `num_steps` steps, for a schedule made on `schedule_steps` steps.

        Rule (documented in docs/schedule-format.md): run step i covers the schedule interval
        [i*S/N, (i+1)*S/N). It is a refresh step if that interval starts inside the warm-up, reaches into the
        final stretch of refresh steps (the last steps all computed), or contains a refresh step of the
        schedule. With N == S this is the schedule itself; with N < S no refresh is lost; with N > S the
        warm-up and the final stretch keep their share of the trajectory and each other refresh step maps to
        exactly one run step.
        """
        if num_steps == schedule_steps:
            return frozenset(self.refresh_steps)
        warmup = self.warmup_steps()
        refresh = set(self.refresh_steps)
        final = 0  # length of the final stretch S-1, S-2, ... of refresh steps
        while schedule_steps - 1 - final in refresh:
            final += 1
        result = set()
        for i in range(num_steps):
            # interval [lo, hi) in schedule steps, kept in exact integer arithmetic (times num_steps)
            lo, hi = i * schedule_steps, (i + 1) * schedule_steps
            if lo < warmup * num_steps or hi > (schedule_steps - final) * num_steps:
                result.add(i)
                continue
            # schedule steps k with lo <= k*N < hi, i.e. ceil(lo/N) <= k < ceil(hi/N)
            if any(k in refresh for k in range(-(-lo // num_steps), -(-hi // num_steps))):
                result.add(i)
        return frozenset(result)


@dataclass(frozen=True)
class Schedule:
    """A whole schedule: one `BlockListSchedule` per block list, on a grid of `num_steps` steps."""

    name: str
    num_steps: int
    block_lists: dict[str, BlockListSchedule]
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    forecast: str = "hold"

    def __post_init__(self):
        if self.forecast not in FORECASTS:
            raise ScheduleError(f"schedule '{self.name}': forecast must be one of {', '.join(FORECASTS)}, "
                                f"got {self.forecast!r}")
        if not _is_index(self.num_steps) or not 1 <= self.num_steps <= MAX_INDEX:
            raise ScheduleError(f"schedule '{self.name}': num_steps must be an integer from 1 to {MAX_INDEX}, "
                                f"got {self.num_steps!r}")
        for list_name, block_list in self.block_lists.items():
            if block_list.refresh_steps and block_list.refresh_steps[-1] >= self.num_steps:
                raise ScheduleError(f"schedule '{self.name}': refresh step {block_list.refresh_steps[-1]} of "
                                    f"'{list_name}' is beyond its {self.num_steps} steps")

    # ---- serialisation -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "schedule") -> "Schedule":
        if not isinstance(data, dict):
            raise ScheduleError(f"{source}: expected a JSON object at the top level")
        unknown = set(data) - _TOP_LEVEL_KEYS
        if unknown:
            raise ScheduleError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
        version = data.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:  # (true and 1.0 equal 1 in Python)
            raise ScheduleError(f"{source}: format_version must be {FORMAT_VERSION}, got {version!r}")
        num_steps = data.get("num_steps")
        if not _is_index(num_steps) or not 1 <= num_steps <= MAX_INDEX:
            raise ScheduleError(f"{source}: num_steps must be an integer from 1 to {MAX_INDEX}, got {num_steps!r}")
        lists = data.get("block_lists")
        if not isinstance(lists, dict) or not lists:
            raise ScheduleError(f"{source}: block_lists must be a non-empty object of block-list name -> schedule")
        block_lists = {
            list_name: _parse_block_list(spec, num_steps, f"{source}: block_lists.{list_name}")
            for list_name, spec in lists.items()
        }
        name = data.get("name", Path(source).stem)
        if not isinstance(name, str):
            raise ScheduleError(f"{source}: name must be a string")
        description = data.get("description", "")
        provenance = data.get("provenance", {})
        if not isinstance(description, str) or not isinstance(provenance, dict):
            raise ScheduleError(f"{source}: description must be a string and provenance an object")
        forecast = data.get("forecast", "hold")
        if forecast not in FORECASTS:
            raise ScheduleError(f"{source}: forecast must be one of {', '.join(FORECASTS)}, got {forecast!r}")
        return cls(name=name, num_steps=num_steps, block_lists=block_lists, description=description,
                   provenance=provenance, forecast=forecast)

    def to_dict(self) -> dict[str, Any]:
        lists = {}
        for list_name, bl in self.block_lists.items():
            spec: dict[str, Any] = {}
            if bl.num_blocks is not None:
                spec["num_blocks"] = bl.num_blocks
            spec["background_blocks"] = compress_ranges(bl.background_blocks)
            spec["refresh_steps"] = compress_ranges(bl.refresh_steps)
            lists[list_name] = spec
        data = {"format_version": FORMAT_VERSION, "name": self.name, "description": self.description,
                "num_steps": self.num_steps, "block_lists": lists}
        if self.forecast != "hold":  # files of the paper's reuse stay as they were
            data["forecast"] = self.forecast
        return {**data, "provenance": self.provenance}

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        # one line per list of numbers/ranges: [0, "2-7", 9] rather than one element per line
        item = r'(?:-?[\d.eE+-]+|"\d+-\d+")'
        text = re.sub(rf"\[\s*({item}(?:,\s*{item})*)\s*\]",
                      lambda m: "[" + ", ".join(part.strip() for part in m.group(1).split(",")) + "]", text)
        Path(path).write_text(text + "\n")

    # ---- model fit and accounting --------------------------------------------------------------
    def check_fits(self, block_list_depths: dict[str, int]) -> None:
        """Raise ScheduleError unless every block list exists on the model with a compatible depth."""
        for list_name, bl in self.block_lists.items():
            if list_name not in block_list_depths:
                raise ScheduleError(
                    f"schedule '{self.name}' names block list '{list_name}', which this model does not have "
                    f"(it has: {', '.join(sorted(block_list_depths)) or 'none'})"
                )
            depth = block_list_depths[list_name]
            if bl.num_blocks is not None and bl.num_blocks != depth:
                raise ScheduleError(
                    f"schedule '{self.name}' was made for {bl.num_blocks} blocks in '{list_name}', "
                    f"but this model has {depth}"
                )
            beyond = [b for b in bl.background_blocks if b >= depth]
            if beyond:
                raise ScheduleError(
                    f"schedule '{self.name}': block {beyond[0]} in '{list_name}' is beyond the model's depth "
                    f"({depth} blocks, indices 0-{depth - 1})"
                )

    def predicted_block_evals(self, block_list_depths: dict[str, int], num_steps: int) -> tuple[int, int]:
        """(computed, total) block evaluations of one branch over `num_steps` steps, from the schedule alone."""
        from .plan import plan  # (plan.py builds on this module)

        plans = plan(self, block_list_depths, num_steps)
        return sum(p.computed for p in plans), sum(p.total for p in plans)


def _parse_block_list(spec: Any, num_steps: int, where: str) -> BlockListSchedule:
    if not isinstance(spec, dict):
        raise ScheduleError(f"{where}: expected an object with background_blocks and refresh_steps")
    unknown = set(spec) - _BLOCK_LIST_KEYS
    if unknown:
        raise ScheduleError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_BLOCK_LIST_KEYS)}")
    for key in ("background_blocks", "refresh_steps"):
        if key not in spec:
            raise ScheduleError(f"{where}: missing key '{key}'")
    num_blocks = spec.get("num_blocks")
    if num_blocks is not None and (not _is_index(num_blocks) or not 1 <= num_blocks <= MAX_INDEX):
        raise ScheduleError(f"{where}.num_blocks: must be an integer from 1 to {MAX_INDEX}, got {num_blocks!r}")
    blocks = expand_ranges(spec["background_blocks"], f"{where}.background_blocks", limit=num_blocks or MAX_INDEX,
                           beyond=(f"block {{}} is beyond num_blocks={num_blocks}" if num_blocks else
                                   f"block {{}} is beyond any model's depth (at most {MAX_INDEX} blocks)"))
    steps = expand_ranges(spec["refresh_steps"], f"{where}.refresh_steps", limit=num_steps,
                          beyond=f"step {{}} is beyond the schedule's {num_steps} steps (0-{num_steps - 1})")
    if blocks and 0 not in steps:
        raise ScheduleError(
            f"{where}: step 0 must be a refresh step (a reuse step before any compute step has no delta to reuse)"
        )
    return BlockListSchedule(background_blocks=tuple(blocks), refresh_steps=tuple(steps), num_blocks=num_blocks)


MAX_INDEX = 100_000  # no model has this many blocks nor a sampler this many steps: a cap before expanding ranges
_RANGE = re.compile(r"\s*[0-9]+\s*-\s*[0-9]+\s*")  # "first-last", ASCII digits only (str.isdigit takes "²")


def _is_index(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0  # (numpy ints too)


def _without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = next((key for key in keys if keys.count(key) > 1), None)
    if repeated is not None:  # json keeps the last silently: a hand edit that adds a key twice would lose one
        raise ScheduleError(f"key {repeated!r} appears twice in one object")
    return dict(pairs)


def expand_ranges(items: Any, where: str, limit: int = MAX_INDEX, beyond: str = "{} is beyond the limit") -> list[int]:
    """[0, "2-7", 9] -> [0, 2, 3, 4, 5, 6, 7, 9]; rejects duplicates, negatives, non-integers and indices
    >= `limit` (`beyond`, formatted with the index, says why), before a range is expanded."""
    if not isinstance(items, list):
        raise ScheduleError(f"{where}: expected a list of integers or \"first-last\" ranges, got {items!r}")
    values: list[int] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            first = last = item
        elif isinstance(item, str) and _RANGE.fullmatch(item):
            first, last = (int(p) for p in item.split("-"))
            if last < first:
                raise ScheduleError(f"{where}: range {item!r} is empty (last < first)")
        else:
            raise ScheduleError(f"{where}: {item!r} is neither an integer nor a \"first-last\" range")
        if first < 0:
            raise ScheduleError(f"{where}: negative index {first}")
        if last >= limit:
            raise ScheduleError(f"{where}: {beyond.format(last)}")
        if len(values) + last - first >= limit:  # more indices than there are below the limit: some repeat
            raise ScheduleError(f"{where}: indices are listed more than once (more than {limit} in all)")
        values.extend(range(first, last + 1))
    seen: set[int] = set()
    for v in values:
        if v in seen:
            raise ScheduleError(f"{where}: {v} is listed more than once")
        seen.add(v)
    return sorted(values)


def compress_ranges(values: Iterable[int]) -> list[int | str]:
    """[0, 2, 3, 4, 9] -> [0, "2-4", 9] (the inverse of expand_ranges, for readable files)."""
    out: list[int | str] = []
    for first, last in BlockListSchedule(tuple(sorted(values)), ()).runs():
        if last - first >= 2:
            out.append(f"{first}-{last}")
        else:
            out.extend(range(first, last + 1))
    return out


# ---- presets and loading -----------------------------------------------------------------------
def list_presets() -> list[str]:
    folder = resources.files("delta_cache") / "presets"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_schedule(name_or_path: "str | Path | Schedule") -> Schedule:
    """A preset name (see `list_presets()`) or a path to a schedule JSON file -> Schedule."""
    if isinstance(name_or_path, Schedule):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if path.suffix.lower() == ".json" or path.is_file() or "/" in text or "\\" in text:  # (a folder: a preset)
        if path.is_dir():
            raise ScheduleError(f"schedule {path} is a folder; give a schedule .json file (or a preset name)")
        if not path.is_file():
            raise ScheduleError(f"schedule file not found: {path}")
        source = str(path)
        try:
            raw = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ScheduleError(f"{source}: cannot read it as a text file ({err})") from None
    else:
        presets = list_presets()
        if text.lower() not in presets:
            what = (f"'{text}' is a folder, not a schedule file or a preset" if path.is_dir()
                    else f"unknown schedule preset '{text}'")
            raise ScheduleError(f"{what}; presets: {', '.join(presets)} (or a .json path)")
        source = f"preset {text.lower()}"
        raw = (resources.files("delta_cache") / "presets" / f"{text.lower()}.json").read_text()
    try:
        data = json.loads(raw, object_pairs_hook=_without_duplicate_keys)
    except json.JSONDecodeError as err:
        raise ScheduleError(f"{source}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except ScheduleError as err:
        raise ScheduleError(f"{source}: {err}") from None
    return Schedule.from_dict(data, source=source)
