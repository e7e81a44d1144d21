"""The causal LM behind a DMLM: building it (`build`) and its checkpoint folder (`checkpoint`)."""

from dmlm.modeling.build import (
                                      ModelConfig,
                                      build_model,
                                      extend_embeddings,
                                      model_summary,
)
from dmlm.modeling.checkpoint import (
                                      DMLM_JSON,
                                      FORMAT_VERSION,
                                      Checkpoint,
                                      CheckpointFiles,
                                      load_checkpoint,
                                      save_checkpoint,
                                      vocoder_dir,
)

__all__ = ["ModelConfig", "build_model", "extend_embeddings", "model_summary", "DMLM_JSON", "FORMAT_VERSION",
           "Checkpoint", "CheckpointFiles", "load_checkpoint", "save_checkpoint", "vocoder_dir"]
