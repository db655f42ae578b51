{
  description = "infrabot: chat-ops bot for an infrastructure team's Matrix room";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      forAllSystems = lib.genAttrs [
        "x86_64-linux"
        "aarch64-linux"
      ];
      pkgsFor = system: nixpkgs.legacyPackages.${system};
    in
    {
      packages = forAllSystems (system: {
        default = (pkgsFor system).callPackage ./nix/package.nix { };
      });

      overlays.default = final: _prev: {
        infrabot = final.callPackage ./nix/package.nix { };
      };

      # services.infrabot, with this flake's package as the default.
      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.infrabot.package =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          # The test suite's real parts come from nixpkgs here instead of apt.
          default = pkgs.mkShell {
            packages = [
              self.packages.${system}.default.devPython
              pkgs.prometheus-alertmanager
              pkgs.openssh
              pkgs.postgresql
              pkgs.nix
            ];
          };
        }
      );

      formatter = forAllSystems (system: (pkgsFor system).nixfmt-rfc-style);
    };
}
