"""`dmlm tokenize`: manifests -> speech-unit and image-code token stores (sharded, resumable).

Audio is read and validated per record (errors name the manifest and record), encoded by
the codebook's feature backend in length-sorted batches, and assigned to units; see
`dmlm.data.shards` for the on-disk store and resume/merge rules.

Images go to their own store, OUT_DIR/<manifest stem>.image, beside the speech store
OUT_DIR/<manifest stem>: one manifest can feed ASR and I2T. It holds only the records that
have an `image`; codes come from the image codebook, or from an external tokenizer's JSONL.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dmlm.data.manifest import Record, read_manifest
from dmlm.data.shards import TokenStore, build_store, store_file
from dmlm.data.split import store_prefix
from dmlm.tokenizers.image import ImageCodebook, read_external_codes
from dmlm.tokenizers.speech import Codebook
from dmlm.util.audio import AudioError, load_audio
from dmlm.util.errors import MissingFileError, UserError
from dmlm.util.images import ImageError, load_image


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
    records = _records(manifest, store_prefix(out_dir, manifest, "speech"))

    def encode(chunk: list[Record]) -> list[list[int]]:
        return codebook.encode_batch([load_record_audio(manifest, r) for r in chunk])

    meta = {"fingerprint": codebook.fingerprint, "manifest": str(Path(manifest).resolve()), "modality": "speech",
            "codebook": codebook.settings.reproducing()}
    return build_store(records, encode, store_prefix(out_dir, manifest, "speech"), meta, chunk_size=chunk_size,
                       shard=shard, num_shards=num_shards, desc=f"tokenize {Path(manifest).name}")


def _records(manifest: str | Path, prefix: Path) -> list[Record]:
    """The manifest's records, refused if there are none (an empty store trains nothing) or if the store
    would overwrite the manifest itself (`x.json` tokenized into its own folder is the store's `x.json`)."""
    records = read_manifest(manifest)
    if not records:
        raise UserError(f"{manifest}: the manifest has no records; nothing to tokenize")
    mine = Path(manifest).resolve()
    clash = [store_file(prefix, ext) for ext in (".json", ".bin", ".idx.npy") if store_file(prefix, ext).resolve() == mine]
    if clash:
        raise UserError(f"{manifest}: the token store would be written over the manifest itself ({clash[0]}); "
                        "tokenize into another folder (--out), or name the manifest .jsonl")
    return records


def load_record_image(manifest: str | Path, r: Record, size: int):
    try:
        return load_image(r.image_path(manifest), size=size)
    except ImageError as e:
        raise ImageError(f"{manifest}: record {r.id!r}: {e}") from None


def tokenize_images(
    codebook: ImageCodebook, manifest: str | Path, out_dir: str | Path, shard: int = 0, num_shards: int = 1,
    external_codes: str | Path | Mapping[str, list[int]] | None = None, chunk_size: int = 256,
) -> TokenStore | None:
    """Image codes for every record of `manifest` with an `image`, into OUT_DIR/<manifest stem>.image.

    `external_codes` (a JSONL path or {id: codes}) supplies codes made by another tokenizer;
    it is required for an external codebook, and every imaged record must have an entry.
    """
    records = [r for r in _records(manifest, store_prefix(out_dir, manifest, "image")) if r.image is not None]
    if isinstance(external_codes, (str, Path)):
        external_codes = read_external_codes(external_codes, codebook.k)
    if external_codes is None and codebook.is_external:
        raise UserError(f"image codebook {codebook.settings.name!r} is external: give its codes (external_codes)")
    if external_codes is not None:
        missing = [r.id for r in records if r.id not in external_codes]
        if missing:
            raise UserError(f"{manifest}: {len(missing)} imaged records have no external codes, "
                             f"e.g. {missing[0]!r}")
        bad = next((rid for rid, c in external_codes.items() if any(not 0 <= x < codebook.k for x in c)), None)
        if bad is not None:
            raise UserError(f"external codes of {bad!r} are out of range [0, {codebook.k})")

    def encode(chunk: list[Record]) -> list[list[int]]:
        if external_codes is not None:
            return [list(external_codes[r.id]) for r in chunk]
        size = codebook.settings.image_size
        return codebook.encode_batch([load_record_image(manifest, r, size) for r in chunk])

    meta = {"fingerprint": codebook.fingerprint, "manifest": str(Path(manifest).resolve()), "modality": "image",
            "codebook": codebook.settings.reproducing()}
    return build_store(records, encode, store_prefix(out_dir, manifest, "image"), meta,
                       chunk_size=chunk_size, shard=shard, num_shards=num_shards,
                       desc=f"tokenize images {Path(manifest).name}")


def codebook_modality(path: str | Path) -> str:
    """The modality a codebook file declares (files from before images say nothing: speech)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise MissingFileError(f"{path}: codebook file not found")
    try:
        with safe_open(str(path), "np") as fh:
            return (fh.metadata() or {}).get("modality", "speech")
    except Exception as e:  # safetensors raises its own error type for a file that is not one (a manifest)
        raise UserError(f"{path}: not a codebook file (expected the .safetensors `dmlm codebook fit` wrote; "
                        f"{type(e).__name__}: {str(e)[:80]})") from None


def tokenize(codebook: str | Path, manifest: str | Path, out_dir: str | Path, shard: int = 0, num_shards: int = 1,
             external_codes: str | Path | None = None) -> tuple[TokenStore | None, str]:
    """`dmlm tokenize`: `manifest`'s tokens of the codebook's modality into OUT_DIR; (store or None, modality)."""
    modality = codebook_modality(codebook)
    if modality == "image":
        cb = ImageCodebook.load(codebook)
        return tokenize_images(cb, manifest, out_dir, shard=shard, num_shards=num_shards,
                               external_codes=external_codes), modality
    if external_codes:
        raise UserError(f"--external-codes is for external image codebooks; {codebook} is a speech codebook")
    return tokenize_manifest(Codebook.load(codebook), manifest, out_dir, shard=shard, num_shards=num_shards), modality


def fit_bpe(codebook: str | Path | Codebook, manifest: str | Path, units: str | Path, merges: int,
            min_count: int = 2) -> Codebook:
    """`dmlm codebook bpe`: the speech codebook carrying up to `merges` unit merges fitted on the units of
    `manifest` (the training manifest; its token store in `units`, made with this codebook: another
    codebook's store is refused naming both fingerprints)."""
    from dmlm.data.split import Split
    from dmlm.tokenizers.speech import fit_unit_bpe

    cb = codebook if isinstance(codebook, Codebook) else Codebook.load(codebook)
    store = Split(manifest, units).store("speech", cb)
    return fit_unit_bpe(cb, (store[i] for i in range(len(store))), merges, min_count)
