// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * Layers import downwards only (ARCHITECTURE.md): each entry names the layers a directory must not
 * import. The keying modules (src/ike, IKEv1 and AuthIP under it) and the data plane meet only in src/sa.
 */
const UPPER = ['cli', 'shell', 'daemon', 'lab'];
const LAYERS = {
  'src/dataplane': ['ike', ...UPPER],
  'src/esp': ['ike', 'dataplane', 'sa', 'filter', 'policy', ...UPPER],
  'src/sa': ['ike', 'dataplane', ...UPPER],
  'src/ike': ['dataplane', ...UPPER],
  'src/filter': ['ike', 'dataplane', 'sa', ...UPPER],
  'src/policy': ['ike', 'dataplane', 'sa', 'filter', ...UPPER],
  'src/fleet': ['ike', 'dataplane', 'sa', 'esp', 'filter', ...UPPER],
  'src/io': ['ike', 'dataplane', 'sa', 'esp', 'filter', 'policy', ...UPPER],
  'src/packet': ['ike', 'dataplane', 'sa', 'esp', 'filter', 'policy', 'io', ...UPPER],
};
const layerRules = Object.entries(LAYERS).map(([dir, forbidden]) => ({
  files: [`${dir}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      {
        patterns: forbidden.map((layer) => ({
          group: [`**/${layer}/**`],
          message: `${dir} must not import src/${layer}: layers import downwards only (ARCHITECTURE.md)`,
        })),
      },
    ],
  },
}));

export default tseslint.config(
  { ignores: ['dist/', 'build/', 'node_modules/'] },
  js.configs.recommended,
  ...tseslint.configs.strict,
  {
    languageOptions: { parserOptions: { projectService: true } },
    rules: {
      '@typescript-eslint/no-non-null-assertion': 'error',
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', name: ['describe', 'it', 'test'], package: 'node:test' }] },
      ],
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  ...layerRules,
  { files: ['eslint.config.js'], ...tseslint.configs.disableTypeChecked },
);
