"""What the models read: chapter 5's text windows, corpus preparation (litdata chunks) and streaming."""

from gpt_lab import lazy_exports

_NAMES = {
    "shift_windows": "gpt_lab.data.corpus",
    "split_chunks": "gpt_lab.data.corpus",
    "count_windows": "gpt_lab.data.corpus",
    "BoundedLoader": "gpt_lab.data.corpus",
    "CorpusDataModule": "gpt_lab.data.corpus",
    "CorpusError": "gpt_lab.data.corpus_prepare",
    "SourceScan": "gpt_lab.data.corpus_prepare",
    "is_url": "gpt_lab.data.corpus_prepare",
    "find_source_files": "gpt_lab.data.corpus_prepare",
    "check_document": "gpt_lab.data.corpus_prepare",
    "scan_sources": "gpt_lab.data.corpus_prepare",
    "sources_fingerprint": "gpt_lab.data.corpus_prepare",
    "choose_val_documents": "gpt_lab.data.corpus_prepare",
    "split_single_document": "gpt_lab.data.corpus_prepare",
    "document_tokens": "gpt_lab.data.corpus_prepare",
    "TokenizeDocument": "gpt_lab.data.corpus_prepare",
    "write_split": "gpt_lab.data.corpus_prepare",
    "usable_cores": "gpt_lab.data.corpus_prepare",
    "read_meta": "gpt_lab.data.corpus_prepare",
    "write_meta": "gpt_lab.data.corpus_prepare",
    "prepare_corpus": "gpt_lab.data.corpus_prepare",
    "DataError": "gpt_lab.data.text",
    "packaged_text": "gpt_lab.data.text",
    "GPTDatasetV1": "gpt_lab.data.text",
    "ResumableDataLoader": "gpt_lab.data.text",
    "read_text": "gpt_lab.data.text",
    "split_text": "gpt_lab.data.text",
    "TextDataModule": "gpt_lab.data.text",
    "ClassificationDataModule": "gpt_lab.data.classification",
    "read_labelled": "gpt_lab.data.classification",
    "balance_examples": "gpt_lab.data.classification",
    "split_examples": "gpt_lab.data.classification",
    "pandas_sample_positions": "gpt_lab.data.classification",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
