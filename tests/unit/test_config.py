"""microkit.toml parsing: every bad value is refused with a message naming file, key and value."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from microkit import config
from microkit.config import Address
from microkit.errors import ConfigError

HEAD = '[project]\nname = "shop"\n'
USERS = '[services.users]\napp = "services.users.app:app"\nroute = "/users"\n'


def parse(text, environ=None):
    return config.parse(text, Path("microkit.toml"), environ or {})


def error_of(text, environ=None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, environ)
    assert info.value.exit_code == 2
    return str(info.value)


def test_full_config_is_parsed_into_read_only_objects():
    conf = parse(HEAD + '[registry]\nurl = "redis://127.0.0.1:6379/3"\n'
                 '[gateway]\nlisten = "0.0.0.0:8080"\nworkers = 2\nmax_body = "1MB"\n'
                 'trusted_proxies = ["10.0.0.0/8", "::1"]\n' + USERS
                 + 'workers = 3\nenv = { DATABASE_URL = "sqlite:///data/u.db" }\ntimeout = 5\n'
                 '[services.clock]\ncommand = "python clock.py"\nlisten = "[::1]:0"\naccess_log = false\n')
    assert conf.project.name == "shop"
    assert conf.registry.url == "redis://127.0.0.1:6379/3" and not conf.registry.embedded
    assert conf.gateway.listen == Address("0.0.0.0", 8080) and conf.gateway.workers == 2
    assert conf.gateway.max_body == 1024 * 1024 and conf.gateway.trusted_proxies == ("10.0.0.0/8", "::1")
    users = conf.services["users"]
    assert (users.app, users.route, users.workers, users.timeout) == ("services.users.app:app", "/users", 3, 5.0)
    assert users.env["DATABASE_URL"] == "sqlite:///data/u.db"
    assert users.listen == Address("127.0.0.1", 0) and users.graceful_timeout == 10.0
    clock = conf.services["clock"]
    assert clock.command == "python clock.py" and clock.app is None and clock.route is None
    assert str(clock.listen) == "[::1]:0" and clock.access_log is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        users.workers = 1
    with pytest.raises(TypeError):
        conf.services["x"] = users
    with pytest.raises(TypeError):
        users.env["X"] = "1"


@pytest.mark.parametrize("text, size", [("10MB", 10 << 20), ("10M", 10 << 20), ("1K", 1024), ("512kb", 512 << 10),
                                        ("2G", 2 << 30), ("100", 100), ("7B", 7)])
def test_sizes(text, size):
    assert parse(HEAD + f'[gateway]\nmax_body = "{text}"\n').gateway.max_body == size


def test_advertise():
    assert parse(HEAD + USERS + 'advertise = "127.0.0.9"\n').services["users"].advertise == "127.0.0.9"
    assert parse(HEAD + USERS).services["users"].advertise is None


def test_defaults():
    conf = parse(HEAD)
    assert conf.registry.embedded and conf.gateway.listen == Address("127.0.0.1", 8000)
    assert conf.gateway.max_body == 10 * 1024 * 1024 and conf.gateway.timeout == 30.0
    assert conf.gateway.balance == "round_robin" and conf.gateway.trusted_proxies == ()
    assert dict(conf.services) == {}


@pytest.mark.parametrize("text, message", [
    (HEAD + USERS + 'workers = "two"\n',
     'microkit.toml: services.users.workers: expected an integer >= 1, got "two"'),
    (HEAD + USERS + "workers = 0\n",
     "microkit.toml: services.users.workers: expected an integer >= 1, got 0"),
    (HEAD + USERS + "workers = true\n",
     "microkit.toml: services.users.workers: expected an integer >= 1, got true"),
    (HEAD + USERS + "wokers = 2\n",
     'microkit.toml: services.users.wokers: unknown key; did you mean "workers"?'),
    (HEAD + "[gatway]\n",
     'microkit.toml: gatway: unknown key; did you mean "gateway"?'),
    (HEAD + "[gateway]\nport = 1\n",
     "microkit.toml: gateway.port: unknown key (known: listen, workers, timeout, max_body, balance, "
     "trusted_proxies, access_log, body_timeout, body_buffer, body_temp_dir, lingering_time, lingering_timeout, "
     "metrics_allow, otlp_endpoint, auth, ratelimit, tls_cert, tls_key, http_redirect, legacy)"),
    (HEAD + '[gateway.auth]\ndefault = "basic"\n',
     'microkit.toml: gateway.auth.default: expected one of "none", "jwt", "apikey", got "basic"'),
    (HEAD + '[gateway.auth.jwt]\nalgorithms = ["none"]\n',
     'microkit.toml: gateway.auth.jwt.algorithms: expected algorithms among "HS256", "RS256", "ES256", got "none"'),
    (HEAD + '[gateway.auth.jwt]\nleway = 5\n',
     'microkit.toml: gateway.auth.jwt.leway: unknown key; did you mean "leeway"?'),
    (HEAD + '[gateway.auth.jwt]\njwks_file = "missing.json"\n',
     'microkit.toml: gateway.auth.jwt.jwks_file: "missing.json": no such file next to microkit.toml'),
    (HEAD + USERS + 'auth = "jwt"\n',
     "microkit.toml: gateway.auth.jwt.algorithms: is required: services.users uses JWT auth"),
    (HEAD + '[gateway.auth.jwt]\nalgorithms = ["RS256"]\n' + USERS + 'auth = "jwt"\n',
     "microkit.toml: gateway.auth.jwt: RS256/ES256 need public_key, public_keys or jwks_file"),
    (HEAD + USERS + 'rate_limit = "100 per minute"\n',
     "microkit.toml: services.users.rate_limit: rate '100 per minute': write COUNT/UNIT such as \"100/min\" "
     "(units: s, sec, second, min, minute, h, hour, day)"),
    (HEAD + '[gateway.ratelimit]\non_redis_down = "maybe"\n',
     'microkit.toml: gateway.ratelimit.on_redis_down: expected one of "open", "closed", got "maybe"'),
    (HEAD + USERS + 'cors = { methods = ["GET"] }\n', "microkit.toml: services.users.cors.origins: is required"),
    (HEAD + USERS + 'scopes = ["admin"]\n',
     'microkit.toml: services.users.scopes: need auth = "jwt" or "apikey" (with auth "none" nobody has scopes '
     'and the route would be open)'),
    (HEAD + USERS + 'cors = { origins = "*", credentials = true }\n',
     'microkit.toml: services.users.cors: credentials = true needs a list of origins, not "*"'),
    (HEAD + '[gateway]\nmax_body = "ten"\n',
     'microkit.toml: gateway.max_body: expected a size like 10485760 or "10MB", got "ten"'),
    (HEAD + '[gateway]\ntrusted_proxies = ["10.0.0.0/8", "proxy"]\n',
     'microkit.toml: gateway.trusted_proxies: expected IP addresses or networks, got "proxy"'),
    (HEAD + USERS + 'balance = "random"\n',
     'microkit.toml: services.users.balance: expected one of "round_robin", "least_outstanding", got "random"'),
    (HEAD + '[services.users]\napp = "services.users.app:app"\nroute = "users"\n',
     'microkit.toml: services.users.route: expected a path prefix like "/users" '
     '(starts with "/", no trailing "/"), got "users"'),
    (HEAD + '[services.users]\napp = "services.users.app:app"\nroute = "/users/"\n',
     'microkit.toml: services.users.route: expected a path prefix like "/users" '
     '(starts with "/", no trailing "/"), got "/users/"'),
    (HEAD + '[services.users]\napp = "services.users.app:app"\nroute = "/a/../b"\n',
     'microkit.toml: services.users.route: expected a path prefix like "/users" '
     '(starts with "/", no trailing "/"), got "/a/../b"'),
    (HEAD + USERS + '[services.people]\napp = "services.people.app:app"\nroute = "/users"\n',
     'microkit.toml: services.people.route: "/users" is already the route of services.users'),
    (HEAD + '[services.users]\napp = "services/users/app.py"\n',
     'microkit.toml: services.users.app: expected "module:attr" (e.g. "services.users.app:app"), '
     'got "services/users/app.py"'),
    (HEAD + '[services.users]\napp = "a:b:c"\n',
     'microkit.toml: services.users.app: expected "module:attr" (e.g. "services.users.app:app"), got "a:b:c"'),
    (HEAD + '[services.users]\nroute = "/users"\n',
     'microkit.toml: services.users: needs app = "module:attr", command = "..." or events = "module"'),
    (HEAD + '[services.users]\napp = "a:b"\ncommand = "run"\n',
     'microkit.toml: services.users: needs one of app = "module:attr" or command = "...", not both'),
    (HEAD + '[services.users]\nevents = "services/users.py"\n',
     'microkit.toml: services.users.events: expected a dotted module name such as "services.orders.handlers", '
     'got "services/users.py"'),
    (HEAD + '[events]\nurl = "kafka://h"\n',
     'microkit.toml: events.url: unknown events scheme "kafka://" (known: amqp://, amqps://, redis://, rediss://, redis+sentinel://; '
     'leave url out for the registry\'s Redis or the embedded store)'),
    (HEAD + '[services.users]\nevents = "h"\nconsumers = 0\n',
     'microkit.toml: services.users.consumers: expected an integer >= 1, got 0'),
    (HEAD + '[services.my-svc]\napp = "a:b"\n',
     "microkit.toml: services.my-svc: service names must be Python identifiers (letters, digits, _)"),
    (HEAD + '[gateway]\nlisten = "localhost"\n',
     'microkit.toml: gateway.listen: expected "HOST:PORT" (e.g. "127.0.0.1:8000"), got "localhost"'),
    (HEAD + '[gateway]\nlisten = "127.0.0.1:70000"\n',
     'microkit.toml: gateway.listen: expected "HOST:PORT" (e.g. "127.0.0.1:8000"), got "127.0.0.1:70000"'),
    (HEAD + "[gateway]\nlisten = 8000\n",
     'microkit.toml: gateway.listen: expected "HOST:PORT" (e.g. "127.0.0.1:8000"), got 8000'),
    (HEAD + '[registry]\nurl = "http://x"\n',
     'microkit.toml: registry.url: unknown registry scheme "http://" (known: redis://, rediss://, redis+sentinel://; '
     'leave url out for the embedded registry), got "http://x"'),
    (HEAD + USERS + "env = { PORT = 8000 }\n",
     "microkit.toml: services.users.env: PORT: expected a string, got 8000"),
    (HEAD + USERS + 'env = "A=1"\n',
     'microkit.toml: services.users.env: expected a table like { DATABASE_URL = "sqlite:///data/x.db" }, '
     'got "A=1"'),
    (HEAD + USERS + "timeout = -1\n",
     "microkit.toml: services.users.timeout: expected a number of seconds > 0, got -1"),
    (HEAD + USERS + 'access_log = "no"\n',
     'microkit.toml: services.users.access_log: expected true or false, got "no"'),
    ('services = "users"\n' + HEAD,
     'microkit.toml: services: expected a table ([services]), got "users"'),
    ("[project]\n", "microkit.toml: project.name: is required"),
    (HEAD + '[services.gateway]\napp = "a:b"\n',
     "microkit.toml: services.gateway: \"gateway\" is reserved for microkit's own process; choose another name"),
    ('[project]\nname = "my shop"\n',
     'microkit.toml: project.name: expected a Python identifier, got "my shop"'),
])
def test_bad_config_names_file_key_and_value(text, message):
    assert error_of(text) == message


def test_toml_syntax_error_gives_the_line():
    assert error_of(HEAD + "[services.users\napp = 1\n") == (
        "microkit.toml: line 3, column 16: invalid TOML: Expected ']' at the end of a table declaration")


def test_registry_url_from_the_environment_overrides_the_file():
    conf = parse(HEAD + '[registry]\nurl = "redis://a:6379/0"\n', {"MICROKIT_REGISTRY_URL": "redis://b:6379/1"})
    assert conf.registry.url == "redis://b:6379/1"
    assert error_of(HEAD, {"MICROKIT_REGISTRY_URL": "mysql://x"}).startswith(
        'MICROKIT_REGISTRY_URL: unknown registry scheme "mysql://"')


def test_not_utf8_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "microkit.toml").write_bytes(b'[project]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match=r"^microkit.toml: not UTF-8 text \(byte 18\)$"):
        config.load(tmp_path / "microkit.toml")
    with pytest.raises(ConfigError, match=r"^other.toml: no such file$"):
        config.load(tmp_path / "other.toml")


def test_security_settings(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k1.pem").write_text("x")
    conf = config.parse(HEAD + '[gateway.auth]\ndefault = "jwt"\n[gateway.auth.jwt]\nalgorithms = ["RS256"]\n'
                        'public_keys = { k1 = "keys/k1.pem" }\naudience = "shop"\n[gateway.ratelimit]\n'
                        'on_redis_down = "closed"\n' + USERS + 'rate_limit = "100/min"\nscopes = ["users:read"]\n'
                        'cors = { origins = ["https://app.test"], credentials = true }\n',
                        tmp_path / "microkit.toml", {})
    auth = conf.gateway.auth
    assert auth.default == "jwt" and auth.jwt.algorithms == ("RS256",) and auth.jwt.audience == ("shop",)
    assert auth.jwt.leeway == 30.0 and auth.token.ttl == 300 and auth.apikeys.cache_ttl == 1.0
    assert conf.gateway.ratelimit.on_redis_down == "closed" and conf.gateway.ratelimit.by == "ip"
    users = conf.services["users"]
    assert users.rate_limit == "100/min" and users.scopes == ("users:read",) and users.auth is None
    assert users.cors.origins == ("https://app.test",) and users.cors.methods == ("GET", "HEAD", "POST")
    assert config.parse(HEAD + USERS, tmp_path / "microkit.toml", {}).services["users"].cors is None


def test_project_root_moves_the_project_folder(tmp_path):
    (tmp_path / "examples" / "shop").mkdir(parents=True)
    conf = config.parse(HEAD + 'root = "examples/shop"\n', tmp_path / "microkit.toml", {})
    assert conf.root == tmp_path.resolve() / "examples" / "shop"
    with pytest.raises(ConfigError, match=r'project.root: "nowhere" is not a folder next to'):
        config.parse(HEAD + 'root = "nowhere"\n', tmp_path / "microkit.toml", {})


class TestDiscovery:
    def test_explicit_file_wins(self, tmp_path):
        assert config.find("x.toml", {"MICROKIT_CONFIG": "y.toml"}, tmp_path) == Path("x.toml")

    def test_environment_next(self, tmp_path):
        assert config.find(None, {"MICROKIT_CONFIG": "y.toml"}, tmp_path) == Path("y.toml")

    def test_this_folder_or_a_parent(self, tmp_path):
        (tmp_path / "microkit.toml").write_text(HEAD)
        deep = tmp_path / "services" / "users"
        deep.mkdir(parents=True)
        assert config.find(None, {}, deep) == tmp_path.resolve() / "microkit.toml"
        assert config.discover(None, {}, deep).root == tmp_path.resolve()

    def test_none_found(self, tmp_path):
        with pytest.raises(ConfigError, match=r"no microkit.toml in .* or any parent folder "
                                              r"\(run `microkit new project NAME`, or pass -c FILE\)"):
            config.find(None, {}, tmp_path)


def test_the_route_an_app_sees_is_empty_below_a_stripped_prefix():
    conf = parse('[project]\nname = "p"\n[services.a]\napp = "m:app"\nroute = "/a"\n'
                 '[services.b]\napp = "m:app"\nroute = "/b"\nstrip_prefix = true\n'
                 '[services.c]\ncommand = "prog"\n')
    assert [conf.services[n].app_route for n in "abc"] == ["/a", "", ""]


def _classes(settings, seen):
    """The dataclasses a table of settings builds, nested tables included."""
    for item in settings:
        if isinstance(item.parse, config.Table):
            seen.append(item.parse.make)
            _classes(item.parse.settings, seen)
    return seen


def test_every_field_of_the_config_objects_is_a_setting_and_every_setting_a_field():
    made = {config.ProjectConfig: config.PROJECT, config.RegistryConfig: config.REGISTRY,
            config.EventsConfig: config.EVENTS, config.GatewayConfig: config.GATEWAY,
            config.ServiceConfig: config.SERVICE}
    for settings in list(made.values()):
        made.update({cls: config.settings_of(cls) for cls in _classes(settings, [])})
    assert config.ShadowConfig in made and config.JWTConfig in made and config.CorsConfig in made
    for cls, settings in made.items():
        given = {"name"} if cls is config.ServiceConfig else set()
        assert [f.name for f in dataclasses.fields(cls)] == [*given, *(s.name for s in settings)], cls.__name__


def test_a_field_declared_without_a_setting_is_refused_at_import():
    @dataclasses.dataclass(frozen=True)
    class Half:
        declared: int = config.setting(config.integer(1), 1, "A setting.")
        forgotten: int = 2

    with pytest.raises(TypeError, match=r"^Half.forgotten is not declared with setting\(\) or section\(\)$"):
        config.settings_of(Half)
    with pytest.raises(TypeError, match=r"^Half.forgotten is not"):
        config.section(Half, "A nested table.")  # a nested table is checked where its field is declared


def test_the_objects_defaults_are_the_settings_defaults():
    conf = parse(HEAD + '[services.users]\napp = "a:b"\n')
    assert conf.gateway == config.GatewayConfig() and conf.events == config.EventsConfig()
    assert conf.registry == config.RegistryConfig() and conf.services["users"] == config.ServiceConfig("users", app="a:b")
    assert conf.gateway.auth.jwt.public_keys == {} and conf.services["users"].env == {}


def test_choices_come_from_the_modules_that_own_them():
    from microkit.events.settings import SCHEMES as EVENTS_SCHEMES
    from microkit.gateway import balancer, jwt_algorithms
    from microkit.storage import REDIS_SCHEMES
    for policy in balancer.POLICIES:
        assert parse(HEAD + f'[gateway]\nbalance = "{policy}"\n').gateway.balance == policy
    assert parse(HEAD + '[gateway.auth.jwt]\nalgorithms = ["%s"]\n' % '", "'.join(jwt_algorithms.ALLOWED_ALGORITHMS)
                 ).gateway.auth.jwt.algorithms == jwt_algorithms.ALLOWED_ALGORITHMS
    for scheme in REDIS_SCHEMES:
        url = f"{scheme}://h:26379/mymaster/0" if "sentinel" in scheme else f"{scheme}://h:6379/0"
        assert parse(HEAD + f'[registry]\nurl = "{url}"\n').registry.url == url
    for scheme in set(EVENTS_SCHEMES) - {"sqlite"}:
        assert parse(HEAD + f'[events]\nurl = "{scheme}://h"\n').events.url == f"{scheme}://h"
    assert error_of(HEAD + '[events]\nurl = "sqlite:///x.db"\n').startswith(
        'microkit.toml: events.url: unknown events scheme "sqlite://" (known: amqp://,')


def test_loading_a_config_imports_no_gateway_machinery():
    """The owners of the choices are read lazily, and the JWT algorithms from a stdlib-only module."""
    code = ("import sys, pathlib; from microkit import config; "
            "config.parse('[project]\\nname = \"p\"\\n[registry]\\nurl = \"redis://h:1/0\"\\n[events]\\n"
            "url = \"amqp://h\"\\n[gateway]\\nbalance = \"least_outstanding\"\\n[gateway.auth.jwt]\\n"
            "algorithms = [\"HS256\"]\\n', pathlib.Path('microkit.toml'), {}); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'gevent', 'jwt', 'redis', 'cryptography', 'bottle'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, "[]\n", "")
