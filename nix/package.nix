# The bot as a Python application, built by nixpkgs' Python packaging from pyproject.toml:
# name, version, build system and dependencies are all read from it, so the two never drift.
{ lib, python3Packages }:

let
  pyproject = lib.importTOML ../pyproject.toml;
  project = pyproject.project;
  # "psycopg[binary]>=3.1" -> "psycopg": nixpkgs' psycopg already links libpq, the extra
  # only exists for wheels. PyPI names are nixpkgs attribute names once lower-cased.
  attrName =
    requirement: lib.toLower (builtins.head (builtins.match "([A-Za-z0-9_.-]+).*" requirement));
  fromPyproject = map (r: python3Packages.${attrName r});
  testRequirements = project.optional-dependencies.test;
in
python3Packages.buildPythonApplication {
  pname = project.name;
  inherit (project) version;
  pyproject = true;

  # What the Dockerfile copies: the product, no tests, dev stack or benchmarks. (A filter, not
  # lib.fileset, which needs Nix >= 2.14 and the checks here run Debian's Nix 2.8.)
  src = lib.cleanSourceWith {
    name = "infrabot-source";
    src = ../.;
    filter =
      path: type:
      let
        rel = lib.removePrefix "${toString ../.}/" (toString path);
        top = builtins.head (lib.splitString "/" rel);
      in
      builtins.elem top [
        "pyproject.toml"
        "README.md"
        "bot"
        "commands"
      ]
      && baseNameOf path != "__pycache__";
  };

  build-system = fromPyproject pyproject.build-system.requires;
  dependencies = fromPyproject project.dependencies;

  # The tests start real servers (Synapse, PostgreSQL, sshd, …) that a build sandbox lacks;
  # importing every module is what the build can check.
  doCheck = false;
  pythonImportsCheck = [
    "bot.cli"
    "commands"
  ];

  # The interpreter of the flake's devShell: the runtime and test requirements together.
  passthru.devPython = python3Packages.python.withPackages (
    _: fromPyproject (project.dependencies ++ testRequirements)
  );

  meta = {
    inherit (project) description;
    license = lib.licenses.mit;
    mainProgram = "infrabot";
    platforms = lib.platforms.linux;
  };
}
