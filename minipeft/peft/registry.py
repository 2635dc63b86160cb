"""The method registry: every file of minipeft/peft/ that defines CONFIG is a PEFT method.

Adding a method is adding its file. `discover()` imports each module of this package and
registers those that define CONFIG, under `CONFIG.method`; PeftModel, save/load, `minipeft count`,
`minipeft finetune` and the contract tests (tests/peft/test_contract.py, run over every
registered method) know methods only through `METHODS`. Nothing else lists them.

The method contract: what a method file defines
-----------------------------------------------
It opens with the paper, its equation and the shapes, and says which of the four places of the
model it touches (input embeddings, attention keys/values, a layer's output, which existing
parameters change). Then, required:

    CONFIG          its config dataclass. `CONFIG.method` (a ClassVar str) names the method: the
                    registry key, the saved `peft_type` (upper-cased), the --method of the CLI.
                    The defaults must build a working adapter on any model (the contract tests
                    use them). Invalid fields raise ValueError in __post_init__, naming the field
                    (`LoraConfig.r must be ...`). Optional fields the API reads when present:
                    `modules_to_save` (task heads that train and travel with the adapter) and
                    `layers` (block indices, checked by common.check_layers).
    add(pm, name, config)
                    create adapter `name` on PeftModel `pm` (in the base model's dtype). Its new
                    parameters live in ModuleDicts under the key `name`: in pm.inputs (methods on
                    the inputs) or in layers it wraps, subclasses of routing.AdapterLayer that
                    read `self.route`. A method that trains base parameters sets their
                    requires_grad instead (and is EXCLUSIVE). A config that does not fit the
                    model raises ValueError; PeftModel undoes whatever a failed add left.
    formula(model_config, config) -> {"trainable": int, "kept": int, ...}
                    closed-form counts without allocating weights: the parameters that train
                    (and that save_pretrained writes), and those kept once training is over
                    (prefix tuning's `eject` drops its MLP; elsewhere kept = trainable). An EXCLUSIVE
                    method also takes mlm_head=True (BERT's MLM head; HF's counts leave it out).
                    Task heads in modules_to_save count through common.task_heads.
    DEFAULT_LR      the learning rate `finetune` uses when none is given.
    from_options(o) the config `minipeft count` and `minipeft finetune` build from their command
                    line options; o has r, alpha, targets, size, placement, length,
                    with_layernorm, top_k, heads, density (see OPTIONS), each method reads what it needs.

Optional (the default in brackets):
    remove(pm, name)            delete_adapter [drop entry `name` of every ModuleDict]
    state(pm, name) -> {key: Parameter}
                                what save_pretrained writes [the parameters under entry `name`
                                of a ModuleDict, keyed by their path without it: HF's layout]
    load_state(pm, name, arrays)
                                load_adapter [copy each array into state(pm, name)'s parameter]
    merge(pm, name), unmerge(pm, name)
                                fold the adapter into the base weights and take it out again
                                [merge_adapter raises: it adds inputs or a nonlinearity]
    unload(pm, name)            merge_and_unload: put plain modules back after merging [nothing]
    encode_inputs(pm, route, batch_size, ids=None, cache=None) -> dict
                                keyword arguments for Transformer.encode of the routed adapters
                                of this method, from the route and the token ids [none]:
                                prompt= rows before the embeddings (prompt tuning), prefix=
                                key/value rows in every layer (prefix tuning), block_inputs= one
                                (B or 1, T, d) addition per block, or None, added to the hidden
                                state of the tokens before the block (PASTA: at the special
                                tokens it finds in ids). The method handles all its routed
                                adapters at once: two methods giving one keyword cannot be
                                active together
    context_positions(config) -> int
                                positions of n_ctx the adapter takes (a soft prompt) [0]
    deltas(pm, name) -> {path: Tensor}
                                a parametrisation of existing weights: for base parameter paths
                                ('h.0.attn.q.weight', 'wte.weight'), Delta(theta) of that shape;
                                while the PeftModel runs, every attribute holding W0 reads
                                W0 + the active adapters' Deltas (parametrize.py: also the tied
                                LM head), so gradients reach theta and never W0 [none]
    buffers(pm, name) -> {key: Tensor}
                                arrays that travel with the adapter but do not train (a sparse
                                delta's indices): saved beside state(), loaded before it, left
                                out of the parameter counts, reported as index_bytes [none]
    aux_loss(pm, name) -> scalar Tensor or None
                                a term train.fit adds to the task loss (an L0 or L1 penalty) [none]
    before_step(pm, name, step, optimizer)
                                train.fit calls it after backward and clipping, before
                                optimizer.step() (a gradient mask; noise redrawn per step) [none]
    prepare(pm, name, loss_fn, batches)
                                a data-dependent setup before training (a Fisher pass, LT-SFT's
                                full fine-tuning phase); tasks.finetune calls it before fit [none]
    EXCLUSIVE = True            it trains base parameters in place: alone on its model, never
                                routed, deleted or merged [False]
    CAN_DISABLE = False         disable_adapter() refuses: no base model to go back to [True]
    STARTS_AT_BASE = True       before training, outputs equal the base model's exactly [False]
    RANDOM_IN_TRAINING = True   a training-mode forward pass draws random choices (AdaMix's
                                experts), so two passes differ; eval mode is deterministic and
                                the contract tests compare its outputs in eval mode [False]
    ONE_PROCESS = True          its before_step must see the whole step's gradients in this
                                process (SpIEL's re-selection): fit refuses processes > 1 and
                                finetune trains it in one process [False]
    PER_SAMPLE = False          adapter_names cannot route it to some samples of a batch only (a
                                W0 + Delta that the whole batch shares): a ValueError says so [True]

A sparse method's formula counts nonzeros: `trainable` is the number of values it trains, and it
adds `nonzeros` (entries of the base weights it may change) and `index_bytes` (the indices it
saves); PeftModel.trainable_summary and print_trainable_parameters report the same, counted.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import SimpleNamespace

METHODS: dict = {}   # method name ("lora", ...) -> method module, in file-name order

REQUIRED = ("CONFIG", "add", "formula", "DEFAULT_LR", "from_options")

# the command-line options every method's from_options may read, with their defaults
OPTIONS = dict(r=8, alpha=16.0, targets="q,v", size=64, placement="houlsby", length=10,
               with_layernorm=False, top_k=None, heads=(), density=None)


def discover() -> dict:
    """Import every module of minipeft.peft; register each one that defines CONFIG."""
    if METHODS:
        return METHODS
    package = importlib.import_module(__package__)
    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(module, "CONFIG"):
            name = check_contract(module)
            if name in found:
                raise TypeError(f"{module.__name__} and {found[name].__name__} both register the PEFT "
                                f"method {name!r}; give one of their configs another `method`")
            found[name] = module
    METHODS.update(found)
    return METHODS


def check_contract(module) -> str:
    """The method name of a method file, or a TypeError saying what it lacks."""
    missing = [a for a in REQUIRED if not hasattr(module, a)]
    name = getattr(getattr(module, "CONFIG", None), "method", None)
    if missing or not isinstance(name, str):
        what = missing + ([] if isinstance(name, str) else ["CONFIG.method (a ClassVar str)"])
        raise TypeError(f"{module.__name__} defines CONFIG, so it is a PEFT method, but it lacks "
                        f"{', '.join(what)} (the method contract: minipeft/peft/registry.py)")
    return name


def names() -> list:
    """The registered method names, e.g. ['adapter', 'bitfit', 'full', 'lora', 'prefix', 'prompt']."""
    return list(discover())


def method_of(config):
    """The method module of a config instance."""
    methods = discover()
    name = getattr(config, "method", None)
    if name not in methods or not isinstance(config, methods[name].CONFIG):
        raise TypeError(f"{type(config).__name__} is not a PEFT config; expected one of "
                        f"{[m.CONFIG.__name__ for m in methods.values()]}")
    return methods[name]


def config_from_options(method: str, **options):
    """The config of `method` built from command-line options (missing ones take OPTIONS)."""
    methods = discover()
    if method not in methods:
        raise ValueError(f"unknown --method {method!r}; choose one of {', '.join(methods)}")
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; the options are {list(OPTIONS)}")
    return methods[method].from_options(SimpleNamespace(**{**OPTIONS, **options}))
