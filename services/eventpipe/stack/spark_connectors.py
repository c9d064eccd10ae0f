"""Resolves the Spark connector jars (the Kafka source) with Maven into the shared cache.

One download path for every JVM jar of the project: the stack's Kafka broker and these
connectors both live under ``eventpipe.stack.install.cache_dir()``, in a folder named after
the pinned version, filled in a staging folder and renamed into place only once complete.
Jars that pyspark already ships (lz4, snappy, hadoop client, ...) are dropped so that Spark's
own copy is the only one on the classpath.

This is tooling: the enrich runtime never imports it. ``make tools``, the image build and the
tests resolve the jars here; the enrich service receives their folder through its settings
(``EVENTPIPE_ENRICH_SPARK_JARS``, default: the folder this module fills, see
``enrich.config.default_spark_jars``).

Command: ``python -m eventpipe.stack.spark_connectors`` (prints the jar paths).
"""

from __future__ import annotations

import re
import shutil
import sys
from importlib import resources
from pathlib import Path

from eventpipe.stack import install

# Maven Central serves the Kafka source (spark-sql-kafka-0-10_2.13) only up to 4.2.0, so Spark
# itself is pinned to 4.2.0 too (pyproject.toml): connector and runtime match exactly.
# Google's Spark Bigtable connector has no Spark 4 build (docs/enrich.md), hence no jar here.
SPARK_CONNECTOR_VERSION = "4.2.0"
_POM = "spark-connectors-pom.xml"
_VERSION_SUFFIX = re.compile(r"-\d[\w.\-]*\.jar$")


def connectors_dir() -> Path:
    return install.cache_dir() / "spark-connectors" / f"spark-{SPARK_CONNECTOR_VERSION}"


def connector_jars_dir() -> Path:
    """The folder of the resolved jars: what ``EVENTPIPE_ENRICH_SPARK_JARS`` names."""
    return connectors_dir() / "jars"


def _artifact_name(jar: str) -> str:
    return _VERSION_SUFFIX.sub("", jar)


def _pyspark_artifacts() -> set[str]:
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    return {_artifact_name(p.name) for p in jars.glob("*.jar")}


def connector_jars() -> list[Path]:
    """The jars for ``spark.jars``; resolves them with Maven on first use."""
    folder = connectors_dir()
    if not (folder / ".complete").exists():
        mvn = shutil.which("mvn")
        if not mvn:
            raise install.InstallError("`mvn` is not on PATH; it resolves the Spark Kafka source")

        def fill(staging: Path) -> None:
            (staging / "pom.xml").write_text(
                resources.files("eventpipe.stack").joinpath(_POM).read_text()
            )
            install._run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "dependency:copy-dependencies",
                    f"-Dspark.connector.version={SPARK_CONNECTOR_VERSION}",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={staging / 'jars'}",
                ],
                cwd=staging,
            )
            shipped = _pyspark_artifacts()
            for jar in (staging / "jars").glob("*.jar"):
                if _artifact_name(jar.name) in shipped:
                    jar.unlink()
            (staging / ".complete").write_text(SPARK_CONNECTOR_VERSION + "\n")

        install._install_into(folder, fill)
    return sorted(connector_jars_dir().glob("*.jar"))


def main() -> int:
    for jar in connector_jars():
        print(jar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
