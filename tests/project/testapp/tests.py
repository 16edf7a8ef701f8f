"""Tests run by Django's own test runner inside the test project.

They prove the runner's test database goes through multipool's pool, and
that data written in one test is rolled back for the next.
"""

from django.db import connection
from django.test import TestCase, TransactionTestCase

from multipool.pools import manager
from tests.project.testapp.models import Item


class PooledTestDatabase(TestCase):
    def test_runs_against_the_test_database_through_the_pool(self):
        self.assertTrue(connection.settings_dict["NAME"].startswith("test_"))
        Item.objects.create(name="a")
        self.assertEqual(Item.objects.count(), 1)
        pool = manager.get(connection.alias)
        self.assertIsNotNone(pool)
        self.assertEqual(pool.spec.name, connection.settings_dict["NAME"])

    def test_previous_test_data_is_gone(self):
        self.assertEqual(Item.objects.count(), 0)


class PooledTransactionTest(TransactionTestCase):
    def test_connections_are_returned_between_tests(self):
        Item.objects.create(name="b")
        connection.close()
        stats = manager.stats(connection.alias)[connection.alias]
        self.assertEqual(stats.checked_out, 0)
        self.assertEqual(Item.objects.count(), 1)


class DriverInUse(TestCase):
    def test_driver_is_the_one_requested(self):
        import os

        if connection.vendor != "postgresql":
            self.skipTest("PostgreSQL only")
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        self.assertIs(is_psycopg3, os.environ.get("MULTIPOOL_FORCE_PSYCOPG2") != "1")
