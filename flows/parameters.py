"""What the flows take: each stage's settings as one object, generated from that stage's config dataclass
(`bert_core.config.parameters_model`), so that a field's type, choices, bounds, default and description are written
once, in the dataclass, and Prefect checks a run's values against them (and refuses unknown names) before it starts
and shows them in the run form.

A run gives only the fields it changes: `bert_core.config.given` takes those (over a profile's) and the stage config
fills in the rest from its own defaults. What a flow wires itself (input and output paths, the seed every stage
shares, parent run ids) is not part of the objects.
"""

from bert_core.config import parameters_model
from bert_core.downstream.classification import FinetuneConfig
from bert_core.downstream.suite import SuiteConfig
from bert_core.examples.generation import ExamplesConfig
from bert_core.ingest.corpus import IngestConfig
from bert_core.training.pretrain import PretrainConfig

# The bundled sample's run, a few minutes on 2 CPU cores: the pipeline's defaults that differ from the stage configs'
# own (which are sized for a real corpus). tests/flows/test_parameters.py holds the schemas to both.
SAMPLE_PROFILE: dict[str, dict[str, object]] = {
    "examples": {"tokenizer": {"vocab_size": 8192}},
    "pretrain": {"learning_rate": 1e-3, "num_warmup_steps": 50, "max_train_steps": 500, "eval_steps": 100,
                 "checkpointing_steps": 100},
    "finetune": {"learning_rate": 5e-4},  # a bert-tiny fine-tunes best far above BERT-base's 5e-5
}
# Continued pretraining starts from trained weights: the sample's length, at the config's lower learning rate.
CONTINUED_PROFILE = {"pretrain": {k: SAMPLE_PROFILE["pretrain"][k] for k in ("num_warmup_steps", "max_train_steps")}}

# Per stage: its config class and the fields every flow wires itself.
STAGES = {
    "ingest": (IngestConfig, ("sources", "seed")),
    "examples": (ExamplesConfig, ("seed",)),
    "pretrain": (PretrainConfig, ("shards_dir", "output_dir", "seed", "mlflow_run_id")),
    "finetune": (FinetuneConfig, ("model_name_or_path", "train_file", "validation_file", "output_dir", "task_name",
                                  "seed")),
    "suite": (SuiteConfig, ("encoder", "output_dir")),
}


def stage_model(stage: str, *, profile: dict | None = None, wired: tuple[str, ...] = (), name: str = ""):
    """The parameters object of `stage`, its defaults `profile`'s over the config's, without what the flow wires."""
    config, always = STAGES[stage]
    return parameters_model(config, exclude=(*always, *wired), defaults=(profile or {}).get(stage),
                            name=name or f"{stage.capitalize()}Parameters")


# The stage flows: the configs' own defaults.
IngestParameters = stage_model("ingest")
ExamplesParameters = stage_model("examples")
PretrainParameters = stage_model("pretrain")
FinetuneParameters = stage_model("finetune")
SuiteParameters = stage_model("suite")
# bert-pipeline: the sample profile's defaults.
SampleExamples = stage_model("examples", profile=SAMPLE_PROFILE)
SamplePretrain = stage_model("pretrain", profile=SAMPLE_PROFILE)
SampleFinetune = stage_model("finetune", profile=SAMPLE_PROFILE)
# continued-pretraining: the base model decides the tokenizer, the pair objective, the size and the architecture.
ContinuedExamples = stage_model("examples", wired=("tokenizer", "pair_objective"))
ContinuedPretrain = stage_model("pretrain", profile=CONTINUED_PROFILE, wired=("preset", "architecture", "init_from"))
