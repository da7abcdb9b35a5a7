"""The auto-configuration's shared backbone passes: candidates of one backbone, weights and input
size are fitted and scored from one pass over the selection's images (:mod:`padim.feature_bank`),
and timed as if each had made its own, so that the budget still measures their final fits.

:class:`SharedPasses` also measures the budget's unit (a plain fit's sums and d×d factorisations,
timed on every ``TIMING_STEP``-th Gaussian and scaled) and estimates the later trials' seconds
from the default candidate's, so that how long those trials happen to take changes no decision.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import distributed
from .alignment import position_spread
from .feature_bank import BANK_MAX_BYTES, FeatureBank, bank_bytes, bank_key
from .low_rank import LowRankGaussians
from .model import as_float16
from .tiling import samples_per_image

TIMING_STEP = 8  # the budget's unit: a plain fit timed on every 8th Gaussian (SharedPasses._plain_fit_seconds)
# ... twice, on two interleaved sets of them; the quicker timing counts (one slow moment does not)
TIMING_REPEATS = 2


class SharedPasses:
    """The selection's shared backbone passes (padim.feature_bank): one bank per backbone, weights
    and input size over the selection's validation images (the good images' 8-bit arrays, which the
    folds also fit on, and the defects), built when its first candidate runs, hooking the union of
    the layers of every candidate it can serve, released when no candidate left needs it. A served
    candidate's fit time (``fit_seconds``) counts the pass's share (the backbone up to its own deepest
    layer, :meth:`FeatureBank.seconds_for`), decoding its files
    (``decode_s`` per image), and for a low-rank fit the d×d factorisations a plain fit would make
    (the dense default's, scaled by Gaussians × d^2.5), so that it still measures the candidate's
    final fit.

    A candidate is served when it is a PaDiM (not a stand-in), outside torchrun (there each fit
    shards its images over the ranks), untiled, and its bank would hold at most BANK_MAX_BYTES.
    Its geometry is decided from the files' headers, as its final fit will; its value range from
    the 8-bit arrays it sees here."""

    def __init__(self, models: list, files: list, validation: list[np.ndarray], decode_s: float = 0.0,
                 sizes: list | None = None):
        self.files, self.validation, self.decode_s = list(files), list(validation), decode_s
        self.n_images = len(self.validation)
        self.sizes = sizes  # the files' sizes from their headers (if not given, read once for every candidate)
        self.keys = {id(m): self._prepared_key(m) for m in models}
        layers: dict[tuple, set] = {}
        for model in models:
            if self.keys[id(model)] is not None:
                layers.setdefault(self.keys[id(model)], set()).update(model.layers_)
        for model in models:  # a bank too large for memory serves nobody
            key = self.keys[id(model)]
            if key is not None and bank_bytes(model, layers[key], self.n_images) > BANK_MAX_BYTES:
                self.keys[id(model)] = None
        self.layers = layers
        self.banks: dict[tuple, FeatureBank] = {}
        self.backbones: dict[tuple, Any] = {}
        self.pass_rate, self.own = None, None  # see record()
        self.dense = None  # the dense (default) trial's Gaussian seconds and _factor_work
        self.unit_s = 0.0  # seconds spent timing the budget's unit (_plain_fit_seconds), until record()

    def _prepared_key(self, model) -> tuple | None:
        """The candidate's decisions (geometry, layers, channels, cell), made from the files'
        headers as its own fit would make them, and its bank key; None if no bank can serve it."""
        if distributed.active() or not hasattr(model, "_fit_from_embeddings"):
            return None
        try:
            self.sizes = model._training_sizes(self.files) if self.sizes is None else self.sizes
            model._prepare_fit(self.files, self.sizes)
            model.value_range_, model.value_kind_ = model._decide_value_range(self.validation)
        except (ValueError, MemoryError):
            return None  # its own fit reports why
        return bank_key(model)

    def serves(self, model) -> bool:
        return self.keys.get(id(model)) is not None

    def trial_estimate(self, model, cost: float, reference: float) -> float:
        """Seconds to try ``model``: for one a bank serves, the bank's pass if not built yet (the
        default's pass's seconds per image and input pixel), the default trial's metrics (the same
        pixels for every candidate) and its fits and scoring, scaled by feature positions × d (what
        :meth:`record` kept); for any other, its declared ``cost`` × the default's trial (``reference``)."""
        key = self.keys.get(id(model))
        if key is None or self.own is None:
            return cost * reference
        pass_s = 0.0 if key in self.banks else self.pass_rate * self.n_images * model.input_size_[0] * model.input_size_[1]
        fits_s, metrics_s, work = self.own
        return pass_s + metrics_s + fits_s * _work(model) / work

    def record(self, model, own_seconds: float, built_s: float, metrics_s: float) -> None:
        """What :meth:`trial_estimate` goes by, from the default candidate's bank-served trial
        (select records that one only, so that no later trial's duration changes an estimate):
        its own part's seconds (``own_seconds``: fitting, scoring and the metrics' ``metrics_s``;
        the budget unit's timing left out) and work, and its pass's if it built one."""
        if built_s > 0:
            self.pass_rate = built_s / (self.n_images * model.input_size_[0] * model.input_size_[1])
        self.own = (max(0.0, own_seconds - self.unit_s - metrics_s), metrics_s, _work(model))
        self.unit_s = 0.0

    def fit_and_score(self, model, fit: list[int], validation: list[int], map_sizes: list, dense: bool = False):
        """Fit ``model`` from its bank on the validation list's rows ``fit`` and score its rows
        ``validation``: scores, maps at their ``map_sizes`` (indexed by row), the fit's and
        validation's seconds as if it had decoded and extracted its own features (the pass's share
        plus its own), and the seconds spent building the bank here (0 if it existed). ``dense``:
        its fit seconds are a plain fit's (d×d factorisations, :meth:`_plain_fit_seconds`), so that
        they measure one."""
        key = self.keys[id(model)]
        built_s = 0.0
        if key not in self.banks:
            t0 = time.perf_counter()
            backbone_key = key[:2]
            bank = FeatureBank(model, self.layers[key], self.validation, backbone=self.backbones.get(backbone_key))
            self.backbones[backbone_key] = bank.backbone
            self.banks[key] = bank
            built_s = time.perf_counter() - t0
        bank = self.banks[key]
        batch = model.geometry_.images_per_batch(model.batch_size)
        t0 = time.perf_counter()
        embeddings = [e for _, e in bank.embeddings(model, fit, batch)]
        assembled = time.perf_counter()
        dense_anyway = self._samples_per_gaussian(model, embeddings) >= model.n_features_
        plain_s = self._plain_fit_seconds(model, embeddings) if dense and not dense_anyway else None
        started = time.perf_counter()
        if dense:
            self.unit_s += started - assembled
        maps_of = self._fit(model, embeddings)
        fitted = time.perf_counter()
        gaussians_s = assembled - t0 + (fitted - started if plain_s is None else plain_s)
        if dense:
            self.dense = (gaussians_s, _factor_work(model))
        elif self.dense is not None:  # a low-rank fit: what its d×d factorisations would cost instead
            gaussians_s = max(gaussians_s, self._dense_gaussians_s(model))
        scores, maps = [], []
        for indices, embedding in bank.embeddings(model, validation, batch):
            batch_scores, batch_maps = model._score_maps(maps_of(embedding.to(model._device())),
                                                         [map_sizes[i] for i in indices])
            scores.extend(batch_scores.tolist())
            maps.extend(batch_maps)
        if len(scores) != len(validation):
            raise ValueError("a validation image could not be scored")
        scored = time.perf_counter()
        pass_per_image = bank.seconds_for(model.layers_) / max(1, self.n_images)
        fit_s = self.fit_per_image(model) * len(fit) + gaussians_s
        return scores, maps, fit_s, pass_per_image * len(validation) + scored - fitted, built_s

    def position_spread(self, model, rows: list[int]) -> float | None:
        """The position spread (padim.alignment, one group: the whole image) of ``model``'s
        features on the bank's ``rows``; None if no bank holds them."""
        bank = self.banks.get(self.keys.get(id(model)))
        if bank is None:
            return None
        batch = model.geometry_.images_per_batch(model.batch_size)
        try:
            return position_spread((embedding for _, embedding in bank.embeddings(model, rows, batch)), "image")
        except ValueError:  # too few images or positions to tell
            return None

    def fit_estimate(self, model, n_fit: int) -> float | None:
        """Before trying a served ``model`` whose bank exists: its selection fit's seconds on
        ``n_fit`` images, as :meth:`fit_and_score` will count them (its share of the pass, decoding,
        and the dense trial's Gaussian seconds scaled by :func:`_factor_work`); else None."""
        if self.keys.get(id(model)) not in self.banks or self.dense is None:
            return None
        return self.fit_per_image(model) * n_fit + self._dense_gaussians_s(model)

    def _dense_gaussians_s(self, model) -> float:
        """The dense trial's Gaussian seconds scaled to ``model``'s d×d factorisations (:func:`_factor_work`)."""
        seconds, work = self.dense
        return seconds * _factor_work(model) / work

    def fit_per_image(self, model) -> float:
        """A fit's seconds per image for a served ``model``: decoding its file and its share of the pass."""
        return self.banks[self.keys[id(model)]].seconds_for(model.layers_) / max(1, self.n_images) + self.decode_s

    @staticmethod
    def _samples_per_gaussian(model, embeddings: list) -> int:
        """Training samples each Gaussian gets from ``embeddings``: :meth:`_fit` factorises d×d
        covariances when they are at least d."""
        return sum(len(e) for e in embeddings) * samples_per_image(*model.feature_size_, model.cell_)

    @staticmethod
    def _plain_fit_seconds(model, embeddings: list) -> float:
        """Seconds a plain fit's sums and d×d factorisations would take on ``embeddings``: those of
        every TIMING_STEP-th Gaussian, timed and scaled to all of them (both are linear in the
        number of Gaussians), so that the budget's unit costs a few eighths of a fit to measure. It
        is timed TIMING_REPEATS times, each on another interleaved set of Gaussians, and the quickest
        counts: a slow moment (another process, a page-fault storm) would otherwise be multiplied
        by TIMING_STEP along with the rest. Parts of fewer Gaussians each would not do: a part
        smaller than a few factorisation chunks leaves a worker thread idle and times slow, and
        short timings vary more (RESULTS.md §31). Converting the features to float16 is no
        Gaussian's work: it is counted once, unscaled."""
        step = max(1, min(TIMING_STEP, model.n_gaussians_ // 64))
        t0 = time.perf_counter()
        embeddings = [as_float16(e) for e in embeddings]
        converted_s = time.perf_counter() - t0
        # the first factorisations' one-off costs (code paged in, thread pools started) are no
        # Gaussian's: paid on a few Gaussians first, not scaled to all of them with the rest
        warm_up, _ = model._summed(embeddings[:1], every=max(step, model.n_gaussians_ // 8))
        warm_up.finalize(model.eps)
        per_gaussian = []
        for repeat in range(TIMING_REPEATS):
            t0 = time.perf_counter()
            stats, _ = model._summed(embeddings, every=step, first=repeat * step // TIMING_REPEATS)
            stats.finalize(model.eps)
            per_gaussian.append((time.perf_counter() - t0) / stats.num_positions)
        return converted_s + min(per_gaussian) * model.n_gaussians_

    @classmethod
    def _fit(cls, model, embeddings: list):
        """Fit ``model``'s Gaussians from its training embeddings; its maps function. With fewer
        samples per Gaussian than features, the exact low-rank form (padim.low_rank) replaces the
        d×d factorisations, most of a trial's time otherwise; the model is then not fitted itself."""
        per_gaussian = cls._samples_per_gaussian(model, embeddings)
        if per_gaussian >= model.n_features_:
            model._fit_from_embeddings(embeddings)
            return model._maps_from_embedding
        if per_gaussian < 2:
            raise ValueError(f"need at least 2 readable training images, got {sum(len(e) for e in embeddings)}")
        device = model._device()
        low_rank = LowRankGaussians([model._to_samples(e.to(device)) for e in embeddings], model.eps)
        return lambda embedding: model._maps_from_distances(low_rank.distances(model._to_samples(embedding)),
                                                             embedding)

    def release(self, done, remaining: list) -> None:
        """Forget the banks (and backbones) no candidate in ``remaining`` needs."""
        needed = {self.keys.get(id(m)) for m in remaining}
        for key in [k for k in self.banks if k not in needed]:
            del self.banks[key]
        needed_backbones = {k[:2] for k in needed if k is not None}
        for key in [k for k in self.backbones if k not in needed_backbones]:
            del self.backbones[key]


def _work(model) -> float:
    """A trial's own work, for scaling its time: feature positions × d (the low-rank scoring's)."""
    return model.feature_size_[0] * model.feature_size_[1] * model.n_features_


def _factor_work(model) -> float:
    """A plain fit's d×d factorisation work, for scaling its time: Gaussians × d^2.5 (batched
    factorisations of larger matrices run faster per flop: 1008 of d 344 took 1.24× the time of
    4032 of d 176 here, where d³ says 1.87×)."""
    return model.n_gaussians_ * model.n_features_ ** 2.5
