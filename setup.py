"""Packaging for microkit. Templates live at the top level and ship as package data under microkit/templates."""

from pathlib import Path

from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent

# The compiled hot paths: the HTTP engine's (microkit/http/native.py) and the gateway's quick parse of
# upstream response heads. Optional: where they cannot be built (no C compiler), pip still installs
# microkit and each runs its pure-Python twin.
EXTENSIONS = [
    Extension("microkit.http._speedups", ["microkit/http/_speedups.c"], optional=True),
    Extension("microkit.gateway._quickhead", ["microkit/gateway/_quickhead.c"], optional=True),
]


def read_version() -> str:
    for line in (HERE / "microkit" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("microkit/__init__.py has no __version__")


setup(
    name="microkit",
    version=read_version(),
    description="From one Python web process to many services: gevent workers, a gateway, a registry.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["microkit", "microkit.*"]) + ["microkit.templates"],
    package_dir={"microkit.templates": "templates"},
    ext_modules=EXTENSIONS,
    include_package_data=True,
    package_data={"microkit.templates": ["**/*", "**/.gitignore"], "microkit.dashboard": ["static/*"]},
    install_requires=[
        "gevent>=24.2",
        "greenlet>=3.0",
        "bottle>=0.13",
        "click>=8.1",
        "peewee>=3.17",
        "redis>=5.0",
        "tomlkit>=0.12",
        "httptools>=0.6",
        "PyJWT[crypto]>=2.8",
        "amqp>=5.2",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "psycopg2-binary>=2.9",
            "pymysql>=1.1",
            "psycopg[binary]>=3.1",
            "build>=1.0",
            "pyyaml>=6.0",
            "check-jsonschema>=0.29",
            "kubernetes-validate>=1.30",
            "requests>=2.28",
            "werkzeug>=2.2",
            "websocket-client>=1.5",
            "webtest>=3.0",
            "flask>=3.0",
            "sqlalchemy>=2.0",
            "aiohttp>=3.9",
            "pytest-aiohttp>=1.0",
            "zeep>=4.2",
            "defusedxml>=0.7",
            "pytest-xdist>=3.5",
            "aiohttp>=3.8",
            "prometheus_client>=0.17",
            "schemathesis>=3.19",
            "playwright>=1.40",
            "opentelemetry-sdk>=1.20",
            "opentelemetry-exporter-otlp-proto-http>=1.20",
        ],
        "bench": ["gunicorn>=21", "granian>=1.0", "bjoern>=3.2", "py-spy>=0.3", "psycopg2-binary>=2.9"],
        "postgres": ["psycopg2-binary>=2.9"],
        "mysql": ["pymysql>=1.1"],
        # what services made from the built-in templates need at run time (and for their own tests)
        "rest": [],  # its tests need only pytest and microkit.testing, which comes with microkit
        "flask": ["flask>=3.0", "sqlalchemy>=2.0"],
        "aiohttp": ["aiohttp>=3.9", "pytest-aiohttp>=1.0"],
        "soap": ["defusedxml>=0.7", "zeep>=4.2"],
    },
    entry_points={
        "console_scripts": ["microkit = microkit.cli:main"],
        "pytest11": ["microkit = microkit.testing.plugin"],
    },
)
