from gpuaffinity.cli import main

raise SystemExit(main())
