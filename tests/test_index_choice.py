"""`--index-factory auto`: exact search for small catalogues, IVF with a stored nprobe for large ones."""
from __future__ import annotations

import numpy as np
import pytest

from indexer.stores.index_choice import (AUTO, EXACT_SEARCH_MAX_VALUES, MIN_POINTS_PER_LIST,
                                         apply_search_defaults, choose_index, ivf_lists)
from indexer.stores.faiss import build_faiss_index


@pytest.mark.parametrize("n", [1, 100, 10_000, 100_000, 1_000_000, 50_000_000])
def test_ivf_lists_grow_like_sqrt_n_and_stay_trainable(n):
    lists = ivf_lists(n)
    assert lists & (lists - 1) == 0  # a power of two
    assert n >= MIN_POINTS_PER_LIST * lists or lists == 1
    if n >= 100_000:
        assert 2 * np.sqrt(n) <= lists <= 8 * np.sqrt(n)


def test_small_catalogues_get_exact_search_and_large_ones_ivf():
    assert choose_index(AUTO, 3_000, 1280).factory == "Flat"
    assert choose_index(AUTO, EXACT_SEARCH_MAX_VALUES // 128, 128).factory == "Flat"
    just_past = choose_index(AUTO, EXACT_SEARCH_MAX_VALUES // 128 + 1, 128)
    assert just_past.factory.startswith("IVF") and just_past.nprobe == 16
    fashion_products = choose_index(AUTO, 9_583, 1280)  # 12M floats: 5 ms exact, 0.8 ms with IVF
    assert fashion_products.factory == f"IVF{ivf_lists(9_583)},Flat" and fashion_products.nprobe == 16
    large = choose_index(AUTO, 1_000_000, 1280)
    assert large.factory == f"IVF{ivf_lists(1_000_000)}_HNSW32,Flat" and large.nprobe == 4 and "IVF" in large.reason
    medium = choose_index(AUTO, 100_000, 1280)
    assert medium.factory == f"IVF{ivf_lists(100_000)},Flat" and medium.nprobe == 16
    assert choose_index("HNSW32", 1_000_000, 1280).factory == "HNSW32"


def test_nprobe_travels_inside_the_index_file(tmp_path):
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, 4000)] + 0.1 * rng.standard_normal((4000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    choice = choose_index(AUTO, 4000, 6000)  # pretend the dim is large so IVF is chosen
    index = build_faiss_index(vectors, choice.factory)
    apply_search_defaults(index, choice)
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    reread = faiss.read_index(str(tmp_path / "i.faiss"))
    assert faiss.extract_index_ivf(reread).nprobe == choice.nprobe
    _, exact = faiss.knn(vectors[:50], vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = reread.search(vectors[:50], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.9


def test_an_hnsw_quantizer_looks_wider_than_nprobe_after_a_reload(tmp_path):
    import faiss

    from indexer.stores.index_choice import QUANTIZER_EF_SEARCH, IndexChoice

    vectors = np.random.default_rng(1).standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    choice = IndexChoice("IVF64_HNSW32,Flat", nprobe=4)
    index = build_faiss_index(vectors, choice.factory)
    apply_search_defaults(index, choice)
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    reread = faiss.read_index(str(tmp_path / "i.faiss"))  # kept: the IVF view below points into it
    ivf = faiss.extract_index_ivf(reread)
    assert ivf.nprobe == 4 and faiss.downcast_index(ivf.quantizer).hnsw.efSearch == QUANTIZER_EF_SEARCH
