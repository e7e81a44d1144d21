"""`dmlm tokenize`: manifests -> speech-unit token stores (sharded, resumable).

Audio is read and validated per record (errors name the manifest and record), encoded by
the codebook's feature backend in length-sorted batches, and assigned to units; see
`dmlm.data.shards` for the on-disk store and resume/merge rules.
"""

from __future__ import annotations

from pathlib import Path

from dmlm.audio import AudioError, load_audio
from dmlm.data.manifest import Record, read_manifest
from dmlm.data.shards import TokenStore, build_store
from dmlm.tokenizers.speech import Codebook


def load_record_audio(manifest: str | Path, r: Record):
    try:
        return load_audio(r.audio_path(manifest))
    except AudioError as e:
        raise AudioError(f"{manifest}: record {r.id!r}: {e}") from None


def tokenize_manifest(
    codebook: Codebook, manifest: str | Path, out_dir: str | Path, shard: int = 0, num_shards: int = 1,
    chunk_size: int = 256,
) -> TokenStore | None:
    """Units for every record of `manifest` into OUT_DIR/<manifest stem>.{bin,idx.npy,json}."""
    records = read_manifest(manifest)

    def encode(chunk: list[Record]) -> list[list[int]]:
        return codebook.encode_batch([load_record_audio(manifest, r) for r in chunk])

    meta = {"fingerprint": codebook.fingerprint, "manifest": str(Path(manifest).resolve()), "modality": "speech",
            "codebook": codebook.settings.reproducing()}
    return build_store(records, encode, Path(out_dir) / Path(manifest).stem, meta, chunk_size=chunk_size,
                       shard=shard, num_shards=num_shards, desc=f"tokenize {Path(manifest).name}")
