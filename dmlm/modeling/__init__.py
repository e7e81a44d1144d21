"""The causal LM behind a DMLM: building it (`build`) and its checkpoint folder (`checkpoint`)."""

from dmlm.modeling.build import (
                                      ModelConfig,
                                      build_model,
                                      extend_embeddings,
                                      model_summary,
)
from dmlm.modeling.checkpoint import (
                                      CHECKSUMS_JSON,
                                      DMLM_JSON,
                                      FORMAT_VERSION,
                                      STATE_DIR,
                                      Checkpoint,
                                      CheckpointFiles,
                                      fault_point,
                                      load_checkpoint,
                                      model_positions,
                                      recover_interrupted_save,
                                      save_checkpoint,
                                      vocoder_dir,
)

__all__ = ["ModelConfig", "build_model", "extend_embeddings", "model_summary", "DMLM_JSON", "FORMAT_VERSION",
           "Checkpoint", "CheckpointFiles", "load_checkpoint", "save_checkpoint", "vocoder_dir", "CHECKSUMS_JSON",
           "STATE_DIR", "fault_point", "model_positions", "recover_interrupted_save"]
