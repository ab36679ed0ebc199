"""Several indexes side by side in one database (one per model identity) and the catalogue that says which
is active (`VectorBackend.for_index`, `stored_model`, `drop`, `read_catalog` / `write_catalog`, and
`shared.catalog.ModelCatalog` on top of them), on every backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.catalog import ACTIVE, BUILDING, RETIRED, ModelCatalog, index_name
from shared.types import Conflict, ModelInfo
from tests.backends.data import clustered, records

A = ModelInfo("tiny-a", "random", 64)
B = ModelInfo("tiny-b", "random", 32)
B_SAME_DIM = ModelInfo("tiny-a", "/checkpoints/other-weights.pt", 64)


def test_indexes_of_two_models_live_side_by_side(backend):
    a = backend.for_index(index_name(backend.index, A.slug))
    b = backend.for_index(index_name(backend.index, B.slug))
    assert (a.index, b.index) != (backend.index, backend.index) and a.index != b.index
    assert a.stored_model() is None
    a.ensure_schema(A)
    b.ensure_schema(B)
    assert a.stored_model() == A and b.stored_model() == B
    assert backend.stored_model() is None  # the base index was never made
    recs = records(40)
    a.upsert(recs, clustered(40, A.dim, seed=1))
    b.upsert(recs[:25], clustered(25, B.dim, seed=2))
    assert (a.count(), b.count()) == (40, 25)
    query = clustered(1, B.dim, seed=2)[0]
    assert [h.id for h in b.search(query, 5)][0] == recs[0].id
    assert all(len(v) == B.dim for v in b.get_vectors([r.id for r in recs[:3]]).values())
    assert b.delete([recs[0].id]) == 1 and a.count() == 40  # a delete in one index leaves the other alone
    b.drop()
    assert b.stored_model() is None and b.count() == 0
    assert a.count() == 40 and a.stored_model() == A
    b.drop()  # dropping what is gone is no error
    a.drop()


def test_an_index_refuses_another_model_even_of_the_same_dimension(backend):
    a = backend.for_index(index_name(backend.index, A.slug))
    a.ensure_schema(A)
    with pytest.raises(Exception, match="re-embed"):
        backend.for_index(a.index).ensure_schema(B_SAME_DIM)
    a.drop()


def test_catalogue_keys_are_written_read_and_deleted_atomically(backend):
    assert backend.read_catalog() == {}
    value = json.dumps({"model": {"name": "x"}, "text": "quotes ' \" \\ and ünïcode"})
    backend.write_catalog("model:x_1", value)
    backend.write_catalog("active", "x_1")
    backend.write_catalog("active", "y_2")  # overwritten, not added
    view = backend.for_index(index_name(backend.index, A.slug))
    assert view.read_catalog() == backend.read_catalog() == {"model:x_1": value, "active": "y_2"}
    view.drop()  # dropping an index never touches the catalogue
    backend.write_catalog("model:x_1", None)
    backend.write_catalog("model:never", None)
    assert backend.read_catalog() == {"active": "y_2"}


def test_bootstrap_adopts_the_index_of_an_earlier_release(backend):
    backend.ensure_schema(A)  # the bare base index, as the previous release made it
    backend.upsert(records(5), clustered(5, A.dim))
    catalog = ModelCatalog(backend)
    active = catalog.bootstrap(B)  # whatever the settings say now, the stored index is what is active
    assert (active.slug, active.index, active.state, active.model) == (A.slug, backend.index, ACTIVE, A)
    assert catalog.view(active).count() == 5


def test_catalogue_lifecycle_build_activate_retire(backend_factory):
    root = backend_factory()
    catalog = ModelCatalog(root, ttl_s=0)
    a = catalog.bootstrap(A)
    assert a.index == index_name(root.index, A.slug) and catalog.view(a).stored_model() == A
    catalog.view(a).upsert(records(10), clustered(10, A.dim))

    b = catalog.add_building(ModelInfo(B.name, B.pretrained, 0), job_id="job-1", activate_when_done=True)
    assert (b.state, b.job_id, b.activate_when_done) == (BUILDING, "job-1", True)
    with pytest.raises(Conflict, match="no vectors yet"):
        catalog.activate(b.slug)
    catalog.set_model(b.slug, B)
    catalog.view(catalog.get(b.slug)).ensure_schema(B)
    catalog.view(catalog.get(b.slug)).upsert(records(10), clustered(10, B.dim))
    with pytest.raises(Conflict, match="active"):
        catalog.remove(a.slug)

    catalog.activate(b.slug)
    other = ModelCatalog(backend_factory(), ttl_s=0)  # another process sees the switch
    assert other.active().slug == b.slug and other.get(a.slug).state == RETIRED
    assert other.view(other.active()).count() == 10 and other.view(other.active()).stored_model() == B
    with pytest.raises(Conflict, match="already the active"):
        catalog.add_building(B, job_id="job-2", activate_when_done=False)

    catalog.remove(a.slug)
    assert [e.slug for e in other.entries()] == [b.slug]
    assert catalog.view(catalog.get(b.slug)).count() == 10
    assert root.for_index(a.index).count() == 0


def test_vectors_stay_in_their_own_index(backend):
    """Same ids in two indexes of the same dimension: each search sees only its own index's vectors."""
    a = backend.for_index(index_name(backend.index, A.slug))
    b = backend.for_index(index_name(backend.index, B_SAME_DIM.slug))
    a.ensure_schema(A)
    b.ensure_schema(B_SAME_DIM)
    recs = records(30)
    va, vb = clustered(30, 64, seed=5), clustered(30, 64, seed=6)
    a.upsert(recs, va)
    b.upsert(recs, vb)
    for i in (0, 7, 29):
        assert b.search(vb[i], 1)[0].score == pytest.approx(1.0, abs=1e-3)
        assert np.allclose(b.get_vectors([recs[i].id])[recs[i].id], vb[i], atol=1e-3)
        assert np.allclose(a.get_vectors([recs[i].id])[recs[i].id], va[i], atol=1e-3)
    a.drop()
    b.drop()
