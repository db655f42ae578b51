# A stand-in for the `nixpkgs` flake input: `lib` (the vendored nixpkgs lib) and, per system, the
# few packages flake.nix and nix/package.nix use. buildPythonApplication returns its arguments
# (with passthru on top, as mk-python-derivation.nix does), so tests can read what the flake
# asks nixpkgs to build.
{ lib }:

let
  stubs = import ./stubs.nix { inherit lib; };
  # nixpkgs attribute names (pkgs/top-level/python-packages.nix, one directory each under
  # pkgs/development/python-modules/) of the requirements in pyproject.toml.
  pythonNames = [
    "aiohttp"
    "asyncssh"
    "boto3"
    "croniter"
    "hypothesis"
    "jinja2"
    "matplotlib"
    "matrix-nio"
    "moto"
    "mypy"
    "prometheus-client"
    "psycopg"
    # python-packages.nix: psycopg-pool = psycopg.pool;
    "psycopg-pool"
    "pydantic"
    "pytest"
    "pytest-asyncio"
    "pytest-timeout"
    "pytest-xdist"
    "pyyaml"
    "ruff"
    "setuptools"
    "types-pyyaml"
    "wheel"
  ];
  drv = name: {
    type = "derivation";
    inherit name;
    pname = name;
    outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
  };
  python3Packages = lib.genAttrs pythonNames drv // {
    buildPythonApplication =
      args: drv "${args.pname}-${args.version}" // args // (args.passthru or { });
    python.withPackages = f: drv "python3-env" // { packages = f python3Packages; };
  };
  pkgs = {
    inherit lib python3Packages;
    inherit (stubs.pkgs) formats;
    callPackage = lib.callPackageWith pkgs;
    mkShell = args: drv "nix-shell" // args;
    stdenv.hostPlatform.system = "x86_64-linux";
    prometheus-alertmanager = drv "alertmanager";
    openssh = drv "openssh";
    postgresql = drv "postgresql";
    nix = drv "nix";
    nixfmt-rfc-style = drv "nixfmt";
  };
in
{
  inherit lib;
  legacyPackages = lib.genAttrs [
    "x86_64-linux"
    "aarch64-linux"
  ] (_: pkgs);
}
