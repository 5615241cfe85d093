"""Gaussian smoothing of an embedding model and certified 1-NN retrieval (RetrievalGuard).

Two modules: `jaxcert.smoothing.monte_carlo` (the estimator g_hat and the smoothed sets) and
`jaxcert.smoothing.certificates` (the concentration bounds and the certificates); their public
names are re-exported here (`smoothing.smooth`, `smoothing.certify`).

Specification: RetrievalGuard (Wu, Zhang and Huang, ICML 2022); derivations in docs/smoothing.md.

The smoothed embedding of a base embedding h with ||h(x)|| <= F is
g(x) = E_{z ~ N(0, sigma^2 I)} h(x + z) (Sec. 3.2), estimated by Monte Carlo as
g_hat(x) = (1/n) sum_i h(x + z_i) (Sec. 3.3):

* `smooth(embed, sigma=..., num_samples=..., chunk_size=...)` -> `Smoother`, a callable
  `(key, x) -> Smoothed(mean, max_norm)` for a batch `x` of shape (batch, ...). It draws the noise
  on the device, `chunk_size` samples at a time from `fold_in(key, chunk_index)`, feeds the noisy
  copies to `embed` as one batch of chunk_size * batch inputs, and accumulates the chunk sums with
  `lax.scan` (compensated summation), so memory does not grow with n; the last chunk is masked when
  chunk_size does not divide n. One compiled function serves queries and gallery. The noise of a
  chunk is shared by every input of the batch (common random numbers): g_hat(x) is a function of
  (key, x) only, not of the batch it was computed in, and the statistics below never need
  independence between inputs (they combine per-input events with union bounds; docs Sec. 3).
* `sharded_smoother(smoother, mesh)` splits the samples into independent streams spread over the
  devices of a mesh (`jax.shard_map`) and all-reduces their sums (`psum`).
* `bounded_embedding(embed, F, mode)` enforces ||h|| <= F (scale to norm F, or clip to the F-ball);
  `Smoothed.max_norm` records the largest norm among the samples drawn, and the certificates raise
  when it exceeds F.
* `smooth_dataset` smooths a whole array of images in padded batches into `SmoothedEmbeddings`
  (host float64 arrays that also carry n, sigma, F and the float32 rounding allowance of the mean);
  `smooth_select_and_estimate` does it twice, with independent keys, for selection and estimation.
* `certify(...)` certifies each query against the smoothed gallery: the 1-NN retrieved by g_hat, a
  lower bound on the margin d(x; g) (Definition 3.1), and an L2 radius (-1 = abstain) within which
  the 1-NN of g(x + delta) keeps the query's label, with probability >= 1 - alpha over the noise.
  `certificate='retrievalguard'` is the paper's (Lemma 3.8, Theorem 3.5 / Proposition 3.9,
  Algorithm 1); `certificate='bisector'` is ours (docs/smoothing.md Sec. 5): per-pair bisector
  constraints for the `num_negative_pairs` nearest negatives, each with the 1/sigma-Lipschitz bound
  on Phi^-1 of a projection of g (Salman et al. 2019, Lemma 2), the paper's argument for the other
  negatives, and a dimension-free concentration bound. On the same estimates it certifies at least
  the paper's radius whenever its concentration radius is the smaller one (k = 128, alpha = 0.01,
  up to 64 pairs: every n; small k with many pairs: its larger union bound can cost more).

Which samples are shared: the nearest positive x+ (and, for 'bisector', the negatives that get
their own pair constraint) are chosen with *selection* samples independent of the *estimation*
samples the bounds use (docs/smoothing.md Sec. 3): the paper picks x+ with the same samples it
then bounds, which its union bound does not cover.
"""

from jaxcert.smoothing.certificates import Certificate
from jaxcert.smoothing.certificates import CERTIFICATES
from jaxcert.smoothing.certificates import certified_recall_at_1
from jaxcert.smoothing.certificates import check_num_samples
from jaxcert.smoothing.certificates import certify
from jaxcert.smoothing.certificates import float64_distances
from jaxcert.smoothing.certificates import lipschitz_radius
from jaxcert.smoothing.certificates import minimum_num_samples
from jaxcert.smoothing.certificates import NORM_TOLERANCE
from jaxcert.smoothing.certificates import PAPER_ALPHA
from jaxcert.smoothing.certificates import paper_concentration_radius
from jaxcert.smoothing.certificates import PAPER_NUM_SAMPLES
from jaxcert.smoothing.certificates import PAPER_SIGMAS
from jaxcert.smoothing.certificates import smoothed_lipschitz_bound
from jaxcert.smoothing.certificates import vector_concentration_radius
from jaxcert.smoothing.monte_carlo import BOUND_MODES
from jaxcert.smoothing.monte_carlo import bounded_embedding
from jaxcert.smoothing.monte_carlo import sharded_smoother
from jaxcert.smoothing.monte_carlo import ShardedSmoother
from jaxcert.smoothing.monte_carlo import smooth
from jaxcert.smoothing.monte_carlo import smooth_dataset
from jaxcert.smoothing.monte_carlo import smooth_select_and_estimate
from jaxcert.smoothing.monte_carlo import Smoothed
from jaxcert.smoothing.monte_carlo import SmoothedEmbeddings
from jaxcert.smoothing.monte_carlo import Smoother

__all__ = [
    'BOUND_MODES', 'CERTIFICATES', 'NORM_TOLERANCE', 'PAPER_ALPHA', 'PAPER_NUM_SAMPLES',
    'PAPER_SIGMAS', 'Certificate', 'ShardedSmoother', 'Smoothed', 'SmoothedEmbeddings', 'Smoother',
    'bounded_embedding', 'certified_recall_at_1', 'certify', 'check_num_samples',
    'float64_distances', 'lipschitz_radius', 'minimum_num_samples', 'paper_concentration_radius',
    'sharded_smoother', 'smooth', 'smooth_dataset', 'smooth_select_and_estimate', 'smoothed_lipschitz_bound',
    'vector_concentration_radius',
]
