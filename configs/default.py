"""Defaults every experiment config starts from: Kakizaki et al.'s triplet training on the embedded sample.

Each experiment file imports this, overrides a few fields and documents its launch command. The
paper grids (configs/retrievalguard.py, configs/kakizaki.py) build their rows from it and look their
arguments up with `choice`.
"""

import ml_collections


def choice(name: str, value: str, valid):
  """`valid[value]` for a dict (the library's name for a short one), `value` for a tuple; raises
  ValueError listing the valid values when `value` is not among them."""
  if value not in valid:
    raise ValueError(f'Unknown {name} {value!r}; valid: {sorted(valid)}.')
  return valid[value] if isinstance(valid, dict) else value


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = 'embedded'  # see jaxcert.data.DATASET_NAMES
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # idx directory or tfds data_dir
  config.data.image_size = ml_collections.config_dict.placeholder(int)  # resize target (224-px sets)

  config.model = ml_collections.ConfigDict()
  config.model.name = 'small_cnn'  # see jaxcert.models.MODEL_NAMES
  config.model.embedding_dim = 128
  config.model.l2_normalize = False

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'triplet'  # see jaxcert.losses.LOSS_NAMES
  config.loss.margin = 1.0  # Kakizaki et al. Sec. 5.1.4
  config.loss.mining = 'batch_all'  # see jaxcert.losses.MINING_STRATEGIES

  config.method = 'metric'  # see jaxcert.objectives.METHODS
  # Runs' checkpoints are named 'DIR' (the newest) or 'DIR@STEP' (init_from, resume_from, checkpoint).
  config.init_from = ml_collections.config_dict.placeholder(str)  # a run whose encoder starts training
  # A run whose whole train state (step, optimiser) this run branches from, then trains on under this
  # config (e.g. another loss); needs the same model and optimiser chain. Used while this workdir holds
  # no checkpoint of its own.
  config.resume_from = ml_collections.config_dict.placeholder(str)
  config.noise_sigma = 0.0  # > 0: Gaussian-augmented training (GDML, RetrievalGuard)

  config.sampler = 'm_per_class'  # 'm_per_class' or 'epoch'
  config.batch_size = 100  # Kakizaki et al.
  config.m_per_class = 10
  config.num_epochs = 100
  config.num_steps = -1  # > 0 overrides num_epochs
  config.learning_rate = 1e-3  # Adam, Kakizaki et al.
  config.lr_decay_epochs = (25, 42)
  config.lr_decay_factor = 0.1
  config.grad_clip_norm = ml_collections.config_dict.placeholder(float)  # clip the global gradient norm; None: off
  config.collapse_patience_steps = 50  # stop after this many steps of gradient exactly 0 at loss > 0; 0: off

  config.parallel = ml_collections.ConfigDict()
  config.parallel.num_devices = 1  # data-parallel over this many devices (training; certify.py mode ibp); -1 = all
  config.parallel.coordinator_address = ml_collections.config_dict.placeholder(str)  # multi-host only
  config.parallel.num_processes = ml_collections.config_dict.placeholder(int)
  config.parallel.process_id = ml_collections.config_dict.placeholder(int)

  config.checkpoint_every_steps = 500
  config.checkpoint_keep_every_steps = 0  # > 0: keep every checkpoint whose step is a multiple (besides the newest 2)
  config.log_every_steps = 50
  config.progress_bar = True

  config.eval = ml_collections.ConfigDict()
  config.eval.num_queries = 1000  # Kakizaki et al. Sec. 5.1.1
  config.eval.num_candidates = 1000
  config.eval.split_seed = 0
  config.eval.ks = (1, 10, 20, 40)
  config.eval.batch_size = 500

  # certify.py: the run to certify ('DIR' or 'DIR@STEP'), and the mode (jaxcert.certification.MODES).
  config.checkpoint = ml_collections.config_dict.placeholder(str)
  config.certify = ml_collections.ConfigDict()
  config.certify.mode = 'ibp'
  # certify.py mode 'attack': empirical robustness under PGD (jaxcert/evaluation/attack.py).
  config.attack = ml_collections.ConfigDict()
  config.attack.kinds = ('qa', 'ca')  # 'qa', 'ca' (Kakizaki et al. Eqs. 23-24), 'nn' (Panum et al. Algorithm 1)
  config.attack.eps = (0.1, 0.2)  # budgets (Kakizaki et al.: 0.1, 0.2 MNIST/FMNIST; 2/255, 3/255 CIFAR-10)
  config.attack.norm = 'linf'  # 'linf' or 'l2'
  config.attack.num_steps = 100  # Kakizaki et al.: 100 (Panum et al.: 5)
  config.attack.step_size = ml_collections.config_dict.placeholder(float)  # None: eps/10 (qa, ca), 2 eps/steps (nn)
  config.attack.method = 'pgd'  # 'nn' only: 'pgd', 'fgsm' or 'cw_linf' (Panum et al. App. B)
  config.attack.num_sources = 100  # CA: source candidates per query (Kakizaki et al.: 100)
  config.attack.num_queries = -1  # attack the first this many queries of config.eval's; -1 = all
  config.attack.ks = (1, 10, 20, 40)
  config.attack.num_repeats = 1  # attack seeds; tables give mean and std (Panum et al.: 5)
  config.attack.seed = 0
  config.attack.batch_size = 100  # images per attack call
  # Empirical defences (jaxcert/objectives/adversarial.py). 'adversarial': Panum et al. Sec. 3.5.
  config.adversarial = ml_collections.ConfigDict()
  config.adversarial.eps = 0.01  # Panum et al.: L-inf 0.01
  config.adversarial.num_steps = 5  # PGD iterations, step 2 eps / num_steps (Panum et al. Sec. 4.1)
  config.adversarial.norm = 'linf'
  config.adversarial.attack_rate = 0.5  # P(gamma = 1), Panum et al. App. C: 0.1, 0.25, 0.5, 0.75, 1.0
  config.adversarial.negatives = 'distance_weighted'  # or 'random' (Panum et al. App. A: distance-weighted)
  # 'act': anti-collapse triplet (Zhou et al. 2021, robrank's 28x28 recipe: eps 77/255, step 3/255, 32 steps).
  config.act = ml_collections.ConfigDict()
  config.act.eps = 77 / 255
  config.act.step_size = 3 / 255
  config.act.num_steps = 32
  # 'spectral': AckMetric's margin loss L1 plus sum_j alpha_j * (top eigenvalues of W^T W), linear f = W x.
  config.spectral = ml_collections.ConfigDict()
  config.spectral.gamma = 2.0  # similarity threshold (AckMetric: 2)
  config.spectral.alphas = ()  # alpha_1..alpha_k for lambda_{d-k+1}..lambda_max; () = no defence
  # certify.py mode 'ibp': certified retrieval by interval bound propagation (Kakizaki et al., Eqs. 19, 25).
  config.ibp = ml_collections.ConfigDict()
  config.ibp.eps = 0.2  # L-inf radius in pixels (Kakizaki et al.: 0.2 MNIST/FMNIST, 2/255 CIFAR-10)
  config.ibp.ks = (1, 10, 20, 40)  # K of Recall@K and CR-Recall@K (alpha = K - rank)
  config.ibp.eps_sweep = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)  # radii of the CR-Recall@K vs eps plot
  config.ibp.batch_size = 250  # images per interval-bound call
  config.ibp.query_block_size = 250  # verification grid blocks (memory ~ blocks x (d + K) values)
  config.ibp.candidate_block_size = 250
  # What the certificates are computed in: 'float64' (the float32 weights cast exactly; rounding
  # ~1e-16 of the magnitudes, guarded by the slack) or 'float32' (rigorous: outward-rounded bounds
  # of the real-valued encoder, docs/rigorous_float32.md); 'auto': float64 on CPU, float32 on
  # GPU and TPU.
  config.ibp.dtype = 'auto'
  # Widening of every distance bound against rounding, relative to the magnitudes
  # (docs/bounds.md §10); unset: 1e-5 in float64, 0 in the rigorous float32.
  config.ibp.distance_slack = ml_collections.config_dict.placeholder(float)
  # The QA certificate: 'linear' (the pairwise linear specification, exact over the query's
  # embedding box, docs/bounds.md §13), 'network' ('linear', and for each query's nearest
  # same-class candidate the specification also bounded through the encoder by config.ibp.method,
  # a linear method, on the pairs the box leaves undecided; docs/linear_bounds.md §6.1)
  # or 'kakizaki' (Kakizaki et al. Theorem 1, as in the paper).
  config.ibp.qa_bound = 'linear'
  # The CA certificate: 'kakizaki' (Theorem 2 over the candidates' embedding boxes) or 'network'
  # (also each undecided candidate's distance lower bound through the encoder, a linear method).
  config.ibp.ca_bound = 'kakizaki'
  # 'network' bounds: rows per query (QA) and queries per candidate (CA) bounded through the encoder
  # (only the undecided pairs' rows are passed; host memory ~ N x spec_rows x embedding dim floats).
  # 256 rather than 64: QA CR-Recall@40 0.301 -> 0.407 on the quickstart model at eps 0.005 for
  # 21 -> 48 s (docs/linear_bounds.md §6.1).
  config.ibp.spec_rows = 256
  # How the embedding boxes are computed: 'ibp' (interval bound propagation), 'crown_ibp',
  # 'crown' or 'alpha_crown' (linear relaxation bounds of jaxcert.bounds.linear, intersected
  # with IBP; docs/linear_bounds.md compares their cost and tightness).
  config.ibp.method = 'ibp'
  # Certified training (methods 'tbt', 'fctb', 'cibp'; Kakizaki et al. Sec. 5.1.4): eps rises 0 -> eps and
  # kappa falls 1 -> kappa linearly between the ramp steps (equal steps: fixed from that step).
  config.certified = ml_collections.ConfigDict()
  config.certified.eps = 0.2  # eps_e
  config.certified.kappa = 0.5  # kappa_e
  config.certified.ramp_start_steps = 2000
  config.certified.ramp_end_steps = 10000
  # Method 'certified_triplet' (jaxcert/objectives/certified.py): the squared-distance triplet hinge
  # bounded over the QA and CA boxes, kappa-mixed with config.loss.
  config.certified.margin = 1.0  # of the hinge ||a - p||^2 - ||a - n||^2 + margin
  config.certified.qa_bound = 'linear'  # 'linear' (exact over the box) or 'distance' (Theorem 1's)
  config.certified.triplets = 'all'  # 'all', 'nearest_positive' or 'ranking' (certified.selected_triplets)
  config.certified.exclude_nearest = 0  # 'ranking': the anchor's nearest points left out
  config.certified.allowed_violations = 0  # per anchor, its worst-bounded triplets left out (mean_hinge)
  config.certified.qa_weight = 1.0
  config.certified.ca_weight = 1.0
  config.certified.tbt_weight = 0.0  # + this x Kakizaki et al.'s Reg (Eq. 20)
  config.certified.warmup_weight = 0.0  # Shi et al. 2021's L_tightness + L_relu, x (1 - eps / eps_e)
  config.certified.warmup_tolerance = 0.5  # their tau
  config.certified.adversarial = 'none'  # 'none' (IBP), 'sabr' (Mueller et al. 2023), 'mtl_ibp' (De Palma et al. 2024)
  config.certified.pgd_steps = 5  # PGD steps on the anchor's hinge ('sabr', 'mtl_ibp')
  config.certified.sabr_lambda = 0.4  # SABR's box radius / eps
  config.certified.mtl_alpha = 0.5  # MTL-IBP's weight of the box bound (1 - it: the PGD point)
  # CROWN-IBP training (Zhang et al. 2020): each anchor's k worst QA triplets bounded through the
  # network (certified.crown_ibp_tightening), mixed with the box bound by beta, ramped with eps.
  config.certified.crown_ibp_rows = 0  # k; 0: off
  config.certified.crown_ibp_beta_start = 1.0
  config.certified.crown_ibp_beta_end = 0.0
  config.train_split = 'train'  # 'candidates': train on the candidate set C (FCTB, Kakizaki et al. Eq. 21)
  # certify.py mode 'smoothing': RetrievalGuard (Sec. 4.3) and the bisector certificate.
  config.smoothing = ml_collections.ConfigDict()
  config.smoothing.sigma = 0.25  # noise std in pixel units (the paper: 0.1, 0.25, 0.5, 1.0)
  config.smoothing.num_samples = 100_000  # n, estimation samples per image (the paper: 100,000)
  config.smoothing.num_select = 1_000  # independent samples that choose x+ (docs/smoothing.md Sec. 3)
  config.smoothing.alpha = 0.01  # failure probability per query
  config.smoothing.F = 1.0  # embedding norm bound ||h|| <= F
  config.smoothing.bound_mode = 'normalize'  # enforce ||h|| <= F: 'normalize' or 'clip'
  config.smoothing.certificate = 'retrievalguard'  # 'retrievalguard', 'bisector' or 'both'
  config.smoothing.num_negative_pairs = 16  # bisector: negatives with their own constraint
  config.smoothing.chunk_size = 256  # Monte-Carlo samples per scan step
  config.smoothing.batch_size = 8  # images smoothed per call (chunk_size * batch_size per step)
  config.smoothing.protocol = 'leave_one_out'  # or 'split' (queries Q vs candidates C of config.eval)
  config.smoothing.num_queries = 100  # queries certified (the first); -1 = all
  config.smoothing.radii = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # table of Recall@1(r)
  config.smoothing.ablation = ''  # '', 'num_samples' or 'alpha': one curve per ablation value
  config.smoothing.ablation_values = ()
  config.smoothing.seed = 0  # Monte-Carlo noise seed
  config.smoothing.estimates_from = ''  # workdir of an earlier run: certify its smoothed_n<n>.npz
  return config
