// The benchmarks' GitHub stand-in as a service of the container test (compose.test.yaml): every PR is
// labelled 'safe for preview' and contains every commit it is asked about.
import { startFakeGitHub } from '/fake-bench/fake-github.mjs';

const github = await startFakeGitHub({ host: '0.0.0.0', port: 8080 });
github.addCommit(1, process.env.COMMIT);
github.addCommit(1, process.env.SECOND_COMMIT);
github.addCommit(1, process.env.THIRD_COMMIT);
github.addCommit(1, process.env.FOURTH_COMMIT);
console.log(`fake GitHub on ${github.host}`);
