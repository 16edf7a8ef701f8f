from django.db import models

from benchmarks.common import BENCH_TABLE


class Item(models.Model):
    """A row of the benchmark table (created by :func:`benchmarks.common.create_bench_database`)."""

    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=40)

    class Meta:
        managed = False
        db_table = BENCH_TABLE
