"""Cost model from measured profiles: fitted linear step costs per (model, qformat, tp).

step_time = max(a [if prefill], d [if decode]) + b*prefill_tokens + c*attention_pairs
            + g*max(0, prefill_tokens - knee) + e*decode_seqs + f*sum(decode_context)

(coefficients from :mod:`fineserve.costmodel.fit`; all >= 0, so the cost is monotone in
tokens, sequences and context, and linear beyond the profiled grid; a CPU table fitted with
``piecewise_decode`` has a piecewise-linear, non-decreasing E(decode_seqs) instead of
e*decode_seqs, ``StepCoeffs.decode_knots``, and with ``padded_decode`` f*decode_seqs*max(context)
instead of f*sum(decode_context), ``StepCoeffs.decode_padded``), plus ``m`` when the step
has both prefill and decode work: the fixed cost a mixed step pays beyond the larger of the two
fixed terms (on the CPU engine both attention paths run in every layer, and the decode rows
are gathered out of and scattered back into the step's token rows): ``m = m0 + m1 *
decode_seqs``, both >= 0, measured only from profile rows with ``mixed_time``
(``fit_mixed_extra``); the H100 profile has none, so there ``m`` = 0 and the formula is the
fitted one alone. The committed coefficients
``data/h100_fit.json`` were fitted by ``python -m fineserve.costmodel.fit`` from
fineserve-profiles/h100-cost.csv (FineServe paper code, github.com/llm-fineserve/FineServe,
BSD-3-Clause, Samsung SDS); the model works without the data folder. A CPU profile written by
``fineserve profile`` has the same schema: ``TableCostModel.from_csv(path)`` fits it directly.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fineserve.costmodel.base import BatchShape, CostModelHelpers, InstanceKey, InterferenceModel
from fineserve.costmodel.fit import (
    StepCoeffs,
    decode_batch_cost,
    decode_context_work,
    fit_interference,
    fit_profile,
    padded_prefill_work,
)
from fineserve.costmodel.profile import H100_FILE, PROFILE_DIR, ProfileRow, read_profile
from fineserve.workload.data import find_data_file

DEFAULT_FIT_PATH = Path(__file__).with_name("data") / "h100_fit.json"
MODEL_ALIASES: Mapping[str, tuple[str, ...]] = {
    "llama-3.1-8b": ("llama-3-8b",),  # QoQ was profiled on Llama-3-8B, same architecture
    "llama-3-8b": ("llama-3.1-8b",),
}
QFORMAT_FALLBACK: Mapping[str, str] = {"bf16": "fp16"}  # same cost on H100 tensor cores


def find_h100_csv(data_dir: Path) -> Path:
    return find_data_file(data_dir, PROFILE_DIR, H100_FILE)


class TableCostModel(CostModelHelpers):
    """Step costs from fitted profile coefficients; see the module docstring for the formula."""

    def __init__(
        self,
        coeffs: Mapping[InstanceKey, StepCoeffs],
        interference: InterferenceModel | None = None,
        source: str = "",
        mixed_extra: Mapping[InstanceKey, float | tuple[float, float]] | None = None,
    ) -> None:
        self._coeffs = dict(coeffs)
        self.interference = interference or InterferenceModel()
        self.source = source
        # per key (m0, m1): a mixed step's extra m0 + m1 * decode_seqs (a float: m0 alone)
        self._mixed = {k: _mixed_terms(v) for k, v in (mixed_extra or {}).items()}
        # memo of `_lookup` per asked key (the coefficients never change after construction)
        self._found: dict[InstanceKey, StepCoeffs | None] = {}
        # per key: (coefficients, decode base max(0, d) + the empty prefill's variable cost)
        self._decode_base: dict[InstanceKey, tuple[StepCoeffs, float]] = {}

    @classmethod
    def from_csv(
        cls,
        path: Path,
        piecewise_decode: bool = False,
        reweight: bool = False,
        padded_decode: bool = False,
        padded_prefill: int = 0,
    ) -> TableCostModel:
        """Fit a profile CSV (H100 or a ``fineserve profile`` CPU table) right now (options:
        `fit.fit_profile`)."""
        rows = read_profile(path)
        coeffs = fit_profile(rows, piecewise_decode, reweight, padded_decode, padded_prefill)
        mixed = fit_mixed_extra(rows, coeffs)
        return cls(coeffs, fit_interference(rows), source=str(path), mixed_extra=mixed)

    def mixed_extra(self, key: InstanceKey, num_decode: int = 0) -> float:
        """The extra seconds of a step with prefill work and `num_decode` decodes: m0 + m1 *
        `num_decode` (0.0 if unmeasured)."""
        models = (key.model, *MODEL_ALIASES.get(key.model, ()))
        for m in models:
            v = self._mixed.get(InstanceKey(m, key.qformat, key.tp))
            if v is not None:
                return v[0] + v[1] * num_decode if num_decode else v[0]
        return 0.0

    def mixed_terms(self, key: InstanceKey) -> tuple[float, float]:
        """(m0, m1) of `key`'s mixed-step extra ((0.0, 0.0) if unmeasured)."""
        return (self.mixed_extra(key), self.mixed_extra(key, 1) - self.mixed_extra(key))

    @classmethod
    def from_json(cls, path: Path = DEFAULT_FIT_PATH) -> TableCostModel:
        """Load committed (or freshly written) coefficients."""
        doc = json.loads(Path(path).read_text())
        coeffs = {
            InstanceKey(e["model"], e["qformat"], int(e["tp"])): _coeffs_from_json(e)
            for e in doc["instances"]
        }
        return cls(coeffs, InterferenceModel(**doc["interference"]), source=str(path))

    def keys(self) -> list[InstanceKey]:
        return list(self._coeffs)

    def coeffs(self, key: InstanceKey) -> StepCoeffs:
        """Coefficients for ``key`` (after aliases); KeyError naming the key when unknown."""
        found = self._lookup(key)
        if found is None:
            raise KeyError(f"no profile for {key}; known: {sorted(map(str, self._coeffs))}")
        return found

    def _lookup(self, key: InstanceKey) -> StepCoeffs | None:
        """`_search(key)`, memoized per key."""
        try:
            return self._found[key]
        except KeyError:
            found = self._found[key] = self._search(key)
            return found

    def _search(self, key: InstanceKey) -> StepCoeffs | None:
        """The coefficients of ``key``, trying model aliases and qformat fallbacks in order."""
        models = (key.model, *MODEL_ALIASES.get(key.model, ()))
        qformats = (
            key.qformat,
            *((QFORMAT_FALLBACK[key.qformat],) if key.qformat in QFORMAT_FALLBACK else ()),
        )
        for m in models:
            for q in qformats:
                c = self._coeffs.get(InstanceKey(m, q, key.tp))
                if c is not None:
                    return c
        return None

    def supports(self, key: InstanceKey) -> bool:
        return self._lookup(key) is not None

    def step_time(self, key: InstanceKey, batch: BatchShape) -> float:
        if not batch.prefill:
            # decode only: the general formula below with no prefill chunk (same floats)
            ctx = batch.decode_context
            if not ctx:
                return 0.0
            c, base = self._decode_consts(key)
            _, e, f = c.decode
            if c.decode_knots or c.decode_padded:
                return base + decode_batch_cost(c, len(ctx)) + f * decode_context_work(c, ctx)
            return base + e * len(ctx) + f * sum(ctx)
        tokens = batch.prefill_tokens
        ctx = batch.decode_context
        if tokens == 0 and not ctx:
            return 0.0
        c = self.coeffs(key)
        d, e, f = c.decode
        has_p, has_d = tokens > 0, len(ctx) > 0
        fixed = max(c.prefill[0] if has_p else 0.0, d if has_d else 0.0)
        if has_p and has_d and self._mixed:
            fixed += self.mixed_extra(key, len(ctx))
        t = fixed + _prefill_cost(c, tokens, _attention(c, batch))
        if c.decode_knots or c.decode_padded:
            return t + decode_batch_cost(c, len(ctx)) + f * decode_context_work(c, ctx)
        return t + e * len(ctx) + f * sum(ctx)

    def _decode_consts(self, key: InstanceKey) -> tuple[StepCoeffs, float]:
        """(coefficients, ``max(0.0, d) + _prefill_variable`` of no prefill) for ``key``: the
        part of a decode-only step's time that does not depend on the batch."""
        got = self._decode_base.get(key)
        if got is None:
            c = self.coeffs(key)
            got = self._decode_base[key] = (c, max(0.0, c.decode[0]) + _prefill_variable(c, _NONE))
        return got

    def decode_step_times(
        self, key: InstanceKey, contexts: tuple[int, ...] | list[int], k: int
    ) -> list[float]:
        """``step_time`` of ``k`` consecutive decode iterations (iteration j: every context +
        j) in one pass: the context sum of iteration j is ``sum(contexts) + n*j`` (exact
        integers), then the same float operations as ``step_time``."""
        n = len(contexts)
        if not n:
            return [0.0] * k
        c, base = self._decode_consts(key)
        _, e, f = c.decode
        t = base + (decode_batch_cost(c, n) if c.decode_knots else e * n)
        s = decode_context_work(c, contexts)  # padded: n * max, and + n * j stays exact
        return [t + f * (s + n * j) for j in range(k)]

    def prefill_fraction(self, key: InstanceKey, batch: BatchShape) -> float:
        """Share of the step's variable cost due to prefill (for interference)."""
        c = self.coeffs(key)
        p = _prefill_variable(c, batch)
        ctx = batch.decode_context
        dd = decode_batch_cost(c, len(ctx)) + c.decode[2] * decode_context_work(c, ctx)
        return p / (p + dd) if p + dd > 0 else 0.0


_NONE = BatchShape()  # the empty batch: its prefill variable cost is a decode step's


def mixed_probe_prompts(batch: int, input_len: int) -> list[int]:
    """Prompt lengths of the `batch` sequences decoding in a profile row's mixed steps
    (`bench.profile.measure_point_steps`): spread evenly up to `input_len`, (i + 1) *
    input_len // batch, so their decode contexts are uneven, as a serving engine's are."""
    return [max(1, (i + 1) * input_len // batch) for i in range(batch)]


def mixed_shape(row: ProfileRow) -> BatchShape:
    """The (first timed) step a row's ``mixed_time`` measured
    (`bench.profile.measure_point_steps`): one prompt of input_len tokens prefilling beside
    batch_size decodes of uneven contexts: the sequences of `mixed_probe_prompts`, each
    feeding its third output token (context prompt + 2 before it: an untimed mixed step and
    a decode step ran before)."""
    ctx = tuple(n + 2 for n in mixed_probe_prompts(row.batch_size, row.input_len))
    return BatchShape(prefill=((row.input_len, 0),), decode_context=ctx)


def fit_mixed_extra(
    rows: Sequence[ProfileRow], coeffs: Mapping[InstanceKey, StepCoeffs]
) -> dict[InstanceKey, tuple[float, float]]:
    """Per instance with solo ``mixed_time`` rows: (m0, m1) >= 0 of the extra m0 + m1 *
    decodes, fitted to the residuals (measured mixed step - the fitted formula without the
    extra term): the median residual of each batch size (robust to a row caught in a slow
    spell of a shared machine), then least squares over the batch sizes with both terms >= 0
    (`fit.nnls_relative` with unit scale: every non-negative subset tried, so a constant
    alone when the extra does not grow with the decodes, and (0, 0) when the steps cost no
    more than the formula: costs stay monotone). Instances without such rows get no entry."""
    from fineserve.costmodel.fit import nnls_relative

    found: dict[InstanceKey, dict[int, list[float]]] = {}
    for r in rows:
        if r.mixed_time <= 0 or r.mps_percentage < 100 or r.key not in coeffs:
            continue
        plain = TableCostModel({r.key: coeffs[r.key]})
        residual = r.mixed_time - plain.step_time(r.key, mixed_shape(r))
        found.setdefault(r.key, {}).setdefault(r.batch_size, []).append(residual)
    out = {}
    for k, by_batch in found.items():
        batches = sorted(by_batch)
        x = np.array([[1.0, float(b)] for b in batches])
        y = np.array([statistics.median(by_batch[b]) for b in batches])
        m0, m1 = nnls_relative(x, y, np.ones(len(batches)))
        out[k] = (float(m0), float(m1))
    return out


def _mixed_terms(v: float | tuple[float, float]) -> tuple[float, float]:
    """(m0, m1), each clipped at 0, from a constant extra or a pair."""
    if isinstance(v, tuple):
        return (max(0.0, float(v[0])), max(0.0, float(v[1])))
    return (max(0.0, float(v)), 0.0)


def _prefill_variable(c: StepCoeffs, batch: BatchShape) -> float:
    """Prefill cost beyond the fixed term: b*T + c*attention + g*max(0, T - knee)."""
    return _prefill_cost(c, batch.prefill_tokens, _attention(c, batch))


def _attention(c: StepCoeffs, batch: BatchShape) -> float:
    """The prefill attention work the c term counts: the causal pairs, or the padded score
    entries of the CPU engine's batched prefill (`StepCoeffs.prefill_page`)."""
    if c.prefill_page > 0:
        return float(padded_prefill_work(batch.prefill, c.prefill_page))
    return batch.attention_pairs


def _prefill_cost(c: StepCoeffs, tokens: int, pairs: float) -> float:
    """`_prefill_variable` of a batch with ``tokens`` prefill tokens and attention work
    ``pairs`` (`_attention`)."""
    _, b, cp, g, knee = c.prefill
    hinge = max(0.0, tokens - knee) if knee > 0 else 0.0
    return b * tokens + cp * pairs + g * hinge


def _coeffs_from_json(e: Mapping[str, Any]) -> StepCoeffs:
    return StepCoeffs(
        prefill=tuple(float(v) for v in e["prefill"]),  # type: ignore[arg-type]
        decode=tuple(float(v) for v in e["decode"]),  # type: ignore[arg-type]
        decode_knots=tuple((int(b), float(v)) for b, v in e.get("decode_knots", ())),
        decode_padded=bool(e.get("decode_padded", False)),
        prefill_page=int(e.get("prefill_page", 0)),
        n_rows=int(e.get("n_rows", 0)),
        prefill_err_mean=float(e.get("prefill_err_mean", 0.0)),
        prefill_err_max=float(e.get("prefill_err_max", 0.0)),
        decode_err_mean=float(e.get("decode_err_mean", 0.0)),
        decode_err_max=float(e.get("decode_err_max", 0.0)),
    )


def fit_document(csv_path: Path) -> dict[str, Any]:
    """The JSON document for ``csv_path``: per-instance coefficients, interference, roofline."""
    from fineserve.costmodel.roofline import calibrate_roofline

    rows = read_profile(csv_path)
    coeffs = fit_profile(rows)
    inter = fit_interference(rows)
    return {
        "source": f"{csv_path.name}: FineServe paper H100 profiles (github.com/llm-fineserve/"
        "FineServe @ b61b615, examples/cost_files/apex-cost.csv; BSD-3-Clause, Samsung SDS)",
        "generated_by": "python -m fineserve.costmodel.fit --data-dir <data>",
        "prefill_formula": "[a, b, c, g, knee]: a + b*T + c*attention_pairs + g*max(0, T - knee)",
        "decode_formula": "d + e*seqs + f*sum(context)",
        "instances": [
            {"model": k.model, "qformat": k.qformat, "tp": k.tp, **_coeffs_to_json(c)}
            for k, c in coeffs.items()
        ],
        "interference": {
            "prefill_k": round(inter.prefill_k, 5),
            "decode_k": round(inter.decode_k, 5),
        },
        "roofline": calibrate_roofline(rows),
    }


def _coeffs_to_json(c: StepCoeffs) -> dict[str, Any]:
    knots = {"decode_knots": [[b, float(f"{v:.6g}")] for b, v in c.decode_knots]}
    return {
        "prefill": [float(f"{v:.6g}") for v in c.prefill],
        "decode": [float(f"{v:.6g}") for v in c.decode],
        **(knots if c.decode_knots else {}),
        **({"decode_padded": True} if c.decode_padded else {}),
        **({"prefill_page": c.prefill_page} if c.prefill_page else {}),
        "n_rows": c.n_rows,
        "prefill_err_mean": round(c.prefill_err_mean, 4),
        "prefill_err_max": round(c.prefill_err_max, 4),
        "decode_err_mean": round(c.decode_err_mean, 4),
        "decode_err_max": round(c.decode_err_max, 4),
    }


def write_fit(csv_path: Path, out: Path) -> str:
    """Fit ``csv_path`` and write the JSON to ``out``; returns a one-paragraph summary."""
    doc = fit_document(csv_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    inst = doc["instances"]
    worst_p = max((e["prefill_err_max"] for e in inst), default=0.0)
    worst_d = max((e["decode_err_max"] for e in inst), default=0.0)
    mean_p = sum(e["prefill_err_mean"] for e in inst) / max(len(inst), 1)
    mean_d = sum(e["decode_err_mean"] for e in inst) / max(len(inst), 1)
    return (
        f"wrote {out}: {len(inst)} instances; prefill rel. error mean {mean_p:.3f} max "
        f"{worst_p:.3f}; decode rel. error mean {mean_d:.3f} max {worst_d:.3f}; "
        f"interference {doc['interference']}; roofline {doc['roofline'].get('fit_error')}"
    )


def load_fitted_interference(path: Path = DEFAULT_FIT_PATH) -> InterferenceModel:
    """Interference coefficients from the committed JSON (defaults if the file is missing)."""
    if not Path(path).is_file():
        return InterferenceModel()
    return InterferenceModel(**json.loads(Path(path).read_text())["interference"])
