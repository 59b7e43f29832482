import js from '@eslint/js';
import boundaries from 'eslint-plugin-boundaries';
import tseslint from 'typescript-eslint';

// The layers of src/, bottom to top. A folder may import from its own folder
// and from folders on lower rows only; folders on one row may not import each
// other. docs/architecture.md draws the same graph.
const LAYERS = [
  ['util'],
  ['kernels'],
  ['codec'],
  ['pool'],
  ['store'],
  ['nbd'],
  ['wire'],
  ['upstream'],
  ['migrate'],
  ['control', 'config'],
  ['link', 'demo', 'qemu'],
  ['daemon'],
  ['cli'],
];

const layerPolicies = LAYERS.flatMap((row, level) =>
  row.map((type) => ({
    from: { element: { type } },
    allow: { to: { element: { types: { anyOf: [type, ...LAYERS.slice(0, level).flat()] } } } },
  })),
);

export default tseslint.config(
  { ignores: ['build/', 'node_modules/', 'bench/out/', 'assembly/', 'test/kernels/', 'docs/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        require: 'readonly',
        module: 'writable',
        process: 'readonly',
        __dirname: 'readonly',
        console: 'readonly',
      },
    },
    rules: {
      '@typescript-eslint/no-require-imports': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  {
    // Type-aware rules: a promise nobody awaits or catches loses its error.
    files: ['**/*.ts'],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          // tap owns the promise of t.test(): it waits for every subtest and
          // reports a rejection as that test's failure.
          allowForKnownSafePromises: [{ from: 'package', name: 'PromiseWithSubtest', package: '@tapjs/core' }],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
    },
  },
  {
    files: ['src/**/*.ts'],
    plugins: { boundaries },
    settings: {
      'import/resolver': { node: { extensions: ['.ts', '.js', '.json'] } },
      'boundaries/include': ['src/**/*.ts'],
      'boundaries/elements': [
        ...LAYERS.flat().map((type) => ({ type, pattern: `src/${type}`, partialMatch: false })),
        // A folder missing from LAYERS: no policy names it, so its imports fail.
        { type: 'unlayered', pattern: 'src/*', partialMatch: false },
        // src/index.ts and src/log.ts: the package entry and the logger.
        { type: 'root', pattern: 'src', partialMatch: false },
      ],
    },
    rules: {
      'boundaries/dependencies': [
        'error',
        {
          default: 'disallow',
          policies: [
            ...layerPolicies,
            // The package entry re-exports any layer; only the CLI uses the logger.
            { from: { element: { type: 'root' } }, allow: { to: { element: { type: '*' } } } },
            { from: { element: { type: 'cli' } }, allow: { to: { element: { type: 'root' } } } },
          ],
        },
      ],
    },
  },
);
