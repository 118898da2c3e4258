"""kb.services.collections: creating collections."""


import pytest
from django.core.exceptions import ValidationError

from kb.services.collections import collection_create
from tests.factories import make_collection, make_user

pytestmark = pytest.mark.django_db


def test_creator_owns_the_new_collection():
    admin = make_user(is_staff=True)
    collection = collection_create(user=admin, name="Runbooks")
    assert collection.grants.get().role == "owner"


def test_collection_names_are_unique_ignoring_case():
    make_collection("Runbooks")
    with pytest.raises(ValidationError):
        collection_create(user=make_user(is_staff=True), name="runbooks")
