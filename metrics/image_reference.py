"""Distances between a setting's images and reference images, on CLIP image embeddings (L2-normalised, as
every CLIP metric of evalkit uses them). Each pools the images of all the setting's prompts against the
references of those prompts and the corpus.

- clip_fid: the Fréchet distance ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between Gaussians
  fitted to the two sets (Heusel et al. 2017; on CLIP features as Kynkäänniemi et al. 2023 propose).
  Covariances with n - 1; undefined unless each side has more images than the embedding has dimensions
  (otherwise the covariance is singular and the value means little).
- clip_kid: the unbiased estimate of the squared MMD with the cubic kernel k(x, y) = (x.y / d + 1)^3
  (Bińkowski et al. 2018), over the whole sets, for sets of any sizes m and n (the within-set sums over
  m(m-1) and n(n-1), the cross sum over mn); torchmetrics' ``poly_mmd`` is the equal-size case (every sum
  over the first set's size), and torchmetrics' KID averages it over random subsets of one size.
- cmmd: the squared MMD with a Gaussian kernel exp(-||x - y||^2 / (2 sigma^2)), sigma = 10, times 1000,
  the biased estimate over all pairs, diagonal included (Jayasumana et al. 2024, "Rethinking FID").
- clip_precision, clip_recall, clip_density, clip_coverage (Kynkäänniemi et al. 2019; Naeem et al. 2020):
  each image's radius is the Euclidean distance to its k-th nearest neighbour within its own set;
  precision: share of generated images within the radius of some reference; recall: share of references
  within the radius of some generated image; density: mean over generated images of the references whose
  radius holds them, divided by k; coverage: share of references whose radius holds a generated image.
"""

from __future__ import annotations

import functools

import numpy as np
from pydantic import ConfigDict, Field

from evalkit.scoring.metric import Group, PooledMetric, Score
from evalkit_metrics.clip import ClipParams, _Clip, image_embeddings

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r) + Tr(S_f) - 2 Tr((S_r S_f)^(1/2)); the last trace is the sum of the square
    roots of the eigenvalues of S_r S_f (real and non-negative for a product of covariances, up to rounding,
    which is clipped at 0), as torchmetrics computes it: much faster than a matrix square root."""
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root_trace = np.sqrt(np.linalg.eigvals(s_r @ s_f).real.clip(min=0)).sum()
    diff = mu_r - mu_f
    return float(diff @ diff + np.trace(s_r) + np.trace(s_f) - 2 * root_trace)


def kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel (x.y/d + 1)^3, for sets of any sizes (torchmetrics'
    ``poly_mmd`` gives the same only where they are equal)."""
    d = real.shape[1]
    k_rr, k_ff, k_rf = ((a @ b.T / d + 1) ** 3 for a, b in ((real, real), (fake, fake), (real, fake)))
    m, n = len(real), len(fake)
    return float((k_rr.sum() - np.trace(k_rr)) / (m * (m - 1)) + (k_ff.sum() - np.trace(k_ff)) / (n * (n - 1))
                 - 2 * k_rf.mean())


def cmmd(real: np.ndarray, fake: np.ndarray, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """Biased squared MMD with a Gaussian kernel, times ``scale`` (Jayasumana et al. 2024)."""
    gamma = 1 / (2 * sigma ** 2)

    def mean_kernel(a, b):
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * sq).mean()

    return float(scale * (mean_kernel(real, real) + mean_kernel(fake, fake) - 2 * mean_kernel(real, fake)))


def prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Precision, recall, density and coverage with k nearest neighbours (Euclidean)."""
    from sklearn.metrics import pairwise_distances
    from sklearn.neighbors import NearestNeighbors

    def radii(x):  # distance to the k-th nearest neighbour other than the point itself
        return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[0][:, k]

    r_real, r_fake = radii(real), radii(fake)
    d = pairwise_distances(real, fake)  # real x fake
    inside_real = d < r_real[:, None]  # fake j within real i's radius
    return {"precision": float(inside_real.any(axis=0).mean()),
            "recall": float((d < r_fake[None, :]).any(axis=1).mean()),
            "density": float(inside_real.sum(axis=0).mean() / k),
            "coverage": float((d.min(axis=1) < r_real).mean())}


class _Reference(_Clip, PooledMetric):
    needs = frozenset({"images", "reference_images"})
    reference_row = False  # the references against themselves: 0 or 1 by definition

    def features(self, groups: list[Group]) -> tuple[np.ndarray, np.ndarray]:
        """(reference, generated) embeddings of the setting's images."""
        p = self.params
        refs = groups[0].reference_set.pooled(g.prompt_id for g in groups) if groups[0].reference_set else []
        images = [i for g in groups for i in g.images]
        return (image_embeddings(p.model, p.pretrained, refs) if refs else np.zeros((0, 0)),
                image_embeddings(p.model, p.pretrained, images) if images else np.zeros((0, 0)))

    def prepare_groups(self, groups: list[Group]) -> None:
        if groups:
            self.features(groups)  # every image is embedded once

    def compute_pooled(self, groups: list[Group]) -> Score:
        real, fake = self.features(groups)
        need = self.needed(real.shape[1] if real.size else fake.shape[1] if fake.size else 0)
        if len(real) < need or len(fake) < need:
            return Score.undefined(f"{self.name} needs at least {need} images on each side ({self.why}), got "
                                   f"{len(fake)} generated and {len(real)} reference images")
        return Score(self.distance(real, fake))

    why = "two to estimate it"

    def needed(self, dims: int) -> int:
        return 2

    def distance(self, real: np.ndarray, fake: np.ndarray) -> float:
        raise NotImplementedError


class ClipFid(_Reference):
    name = "clip_fid"
    kind = "quality"
    direction = -1
    definition = "Fréchet distance between Gaussians fitted to the CLIP embeddings of the images and the references"
    reference = "Heusel et al. 2017 (FID); Kynkäänniemi et al. 2023 (on CLIP features)"
    why = "more than the embedding's dimensions, or the covariance is singular"
    bounds = (0.0, float("inf"))

    def needed(self, dims: int) -> int:
        return dims + 1

    def distance(self, real, fake):
        return frechet_distance(real, fake)


class ClipKid(_Reference):
    name = "clip_kid"
    kind = "quality"
    direction = -1
    definition = "unbiased squared MMD with the cubic kernel (x.y/d + 1)^3 between image and reference CLIP embeddings"
    reference = "Bińkowski et al. 2018, Demystifying MMD GANs (KID)"

    def distance(self, real, fake):
        return kid(real, fake)


class Cmmd(_Reference):
    name = "cmmd"
    kind = "quality"
    direction = -1
    definition = "1000 x squared MMD (Gaussian kernel, sigma 10, biased) between image and reference CLIP embeddings"
    bounds = (0.0, float("inf"))
    reference = "Jayasumana et al. 2024, Rethinking FID: Towards a Better Evaluation Metric for Image Generation"

    def distance(self, real, fake):
        return cmmd(real, fake)


class PrdcParams(ClipParams):
    model_config = ConfigDict(extra="forbid", frozen=True)
    k: int = Field(5, ge=1, le=1000)  # nearest neighbours that set each image's radius


@functools.lru_cache(maxsize=64)
def _prdc(real: bytes, fake: bytes, shape_r: tuple, shape_f: tuple, k: int) -> dict[str, float]:
    return prdc(np.frombuffer(real).reshape(shape_r), np.frombuffer(fake).reshape(shape_f), k)


class _Prdc(_Reference):
    Params = PrdcParams
    stat = ""

    @property
    def why(self) -> str:
        return f"k={self.params.k} neighbours and the image itself"

    def needed(self, dims: int) -> int:
        return self.params.k + 1

    def distance(self, real, fake):  # the four share one computation
        return _prdc(real.tobytes(), fake.tobytes(), real.shape, fake.shape, self.params.k)[self.stat]


class ClipPrecision(_Prdc):
    name = "clip_precision"
    stat = "precision"
    bounds = (0.0, 1.0)
    kind = "quality"
    definition = "share of generated images inside some reference image's k-NN ball (CLIP embeddings)"
    reference = "Kynkäänniemi et al. 2019, Improved Precision and Recall Metric for Assessing Generative Models"


class ClipRecall(_Prdc):
    name = "clip_recall"
    stat = "recall"
    bounds = (0.0, 1.0)
    kind = "diversity"
    definition = "share of reference images inside some generated image's k-NN ball (CLIP embeddings)"
    reference = "Kynkäänniemi et al. 2019, Improved Precision and Recall Metric for Assessing Generative Models"


class ClipDensity(_Prdc):
    name = "clip_density"
    stat = "density"
    bounds = (0.0, float("inf"))
    kind = "quality"
    definition = "mean count of reference k-NN balls holding a generated image, divided by k (CLIP embeddings)"
    reference = "Naeem et al. 2020, Reliable Fidelity and Diversity Metrics for Generative Models (density)"


class ClipCoverage(_Prdc):
    name = "clip_coverage"
    stat = "coverage"
    bounds = (0.0, 1.0)
    kind = "diversity"
    definition = "share of reference images whose k-NN ball holds a generated image (CLIP embeddings)"
    reference = "Naeem et al. 2020, Reliable Fidelity and Diversity Metrics for Generative Models (coverage)"
