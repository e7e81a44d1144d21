"""`RunFolder(out)`: the names of every file a recipe run writes, asked by every reader.

    out/
      demo.yaml                      the resolved recipe config
      data/{train,dev,test}.jsonl    the prepared corpus (`dmlm.data.prepare`; wavs, images beside)
      units/                         token stores of every manifest (`dmlm tokenize`)
      codebook.safetensors           the speech codebook
      image_codebook.safetensors     the image codebook (when a task reads or writes images)
      model/, model_asr/             checkpoints (the mixture; the ASR-only comparison model)
      model.log.jsonl, model.tb      a checkpoint's run log (`dmlm.training`, beside the checkpoint)
      train.yaml, train_asr.yaml     the run configs handed to torchrun
      eval/KEY.json                  an evaluation report; eval/KEY.hyps.jsonl its hypotheses
      eval/KEY/                      an S2ST evaluation's transcripts (hyps.jsonl, ceiling.hyps.jsonl)
      examples/NAME/                 by-ear evaluations: wavs, spectrograms, hyps.jsonl
      report.json, report.md         the run's summary and its page
      intervals.json                 the headline scores' bootstrap intervals
      stages.json                    stage times summed over invocations
      loss.png, loss_NAME.png        training curves

Design decisions:
- One object names the files, so a reader (report, intervals, study, bench) never re-spells a
  path a writer chose; renaming a file is one edit here.
- An evaluation is keyed by the task spec (`s2tt:es`); its file name replaces the `:` (not
  portable in file names) with `_`, as the evaluation files of earlier runs are named.
- A checkpoint's log files belong to the training run log (`dmlm.training`); this object only
  says which checkpoint.
"""

from __future__ import annotations

from pathlib import Path


def eval_key(spec: str) -> str:
    """The file-name form of an evaluation key (a task spec such as `s2tt:es`, or a name such as `asr_only`)."""
    return spec.replace(":", "_")


class RunFolder:
    """Paths of one run's files under `out` (nothing is created until a writer writes)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.out)!r})"

    # -- inputs the recipe makes ------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """The resolved recipe config (demo.yaml)."""
        return self.out / "demo.yaml"

    @property
    def data(self) -> Path:
        """The prepared corpus's folder (`dmlm.data.prepare` writes SPLIT.jsonl there)."""
        return self.out / "data"

    def manifest(self, split: str) -> Path:
        """A prepared split's manifest, as `prepare` names it."""
        return self.data / f"{split}.jsonl"

    @property
    def units(self) -> Path:
        """The folder of token stores."""
        return self.out / "units"

    @property
    def codebook(self) -> Path:
        return self.out / "codebook.safetensors"

    @property
    def image_codebook(self) -> Path:
        return self.out / "image_codebook.safetensors"

    # -- models ----------------------------------------------------------------------------------
    def model(self, name: str = "mixture") -> Path:
        """A checkpoint folder: `mixture` is model/, any other model NAME is model_NAME/ (`asr_only`: model_asr/)."""
        return self.out / ("model" if name == "mixture" else MODEL_DIRS.get(name, f"model_{name}"))

    def run_config(self, name: str = "mixture") -> Path:
        """The run config a model's torchrun ranks read."""
        return self.out / ("train.yaml" if name == "mixture" else f"train_{self.model(name).name.removeprefix('model_')}.yaml")

    def loss_plot(self, name: str = "mixture") -> Path:
        return self.out / ("loss.png" if name == "mixture" else f"loss_{name}.png")

    # -- evaluations -------------------------------------------------------------------------------
    @property
    def evals(self) -> Path:
        return self.out / "eval"

    def eval_report(self, key: str) -> Path:
        """The JSON report of evaluation `key` (a task spec, or a named evaluation such as `asr_only`)."""
        return self.evals / f"{eval_key(key)}.json"

    def eval_hyps(self, key: str) -> Path:
        """The hypotheses an evaluation wrote beside its report."""
        return hyps_beside(self.eval_report(key))

    def eval_dir(self, key: str) -> Path:
        """The folder an evaluation judged by ear writes beside its report (`dmlm evaluate --out`; S2ST: its
        ways' hyps.jsonl and the ceiling's)."""
        return self.eval_report(key).with_suffix("")

    @property
    def examples(self) -> Path:
        return self.out / "examples"

    def example_dir(self, name: str) -> Path:
        """A by-ear evaluation's folder of wavs, spectrograms and hyps.jsonl (`t2s`, `resynthesis`, …)."""
        return self.examples / name

    def example_hyps(self, name: str) -> Path:
        return self.example_dir(name) / "hyps.jsonl"

    # -- summaries -------------------------------------------------------------------------------
    @property
    def report_json(self) -> Path:
        return self.out / "report.json"

    @property
    def report_md(self) -> Path:
        return self.out / "report.md"

    @property
    def intervals(self) -> Path:
        return self.out / "intervals.json"

    @property
    def stages(self) -> Path:
        return self.out / "stages.json"

    @property
    def train_seconds(self) -> Path:
        """A study run's training wall seconds summed over invocations."""
        return self.out / "train_seconds.json"


MODEL_DIRS = {"asr_only": "model_asr"}
"""Model folders whose names predate `model_NAME` (a finished demo folder keeps working)."""


def hyps_beside(report: Path) -> Path:
    """The per-record hypotheses an evaluation writes beside its JSON report (`dmlm evaluate --out`)."""
    return report.with_suffix(".hyps.jsonl")
