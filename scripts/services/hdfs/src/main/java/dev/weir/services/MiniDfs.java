package dev.weir.services;

import java.io.File;
import java.util.concurrent.CountDownLatch;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.DFSConfigKeys;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import sun.misc.Signal;

/**
 * One NameNode + one DataNode on 127.0.0.1, for Weir's tests (started by scripts/services/hdfs.sh).
 *
 * <p>Environment: WEIR_HDFS_BASEDIR (required: name/data dirs live under it), WEIR_HDFS_PORT
 * (NameNode RPC, default 9000), WEIR_HDFS_HTTP_PORT (NameNode web UI, default 0 = any free
 * port), WEIR_HDFS_FORMAT (default true; false reuses the dirs of an earlier run).
 * Arguments of the form key=value are set on the Hadoop configuration.
 *
 * <p>Prints exactly one line on stdout, "Ready!", once the NameNode has left safe mode and the
 * DataNode is registered; all logging goes to stderr. SIGTERM (or SIGINT) shuts the cluster down
 * cleanly and exits 0.
 */
public final class MiniDfs {
  private MiniDfs() {}

  private static String env(String name, String dflt) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? dflt : v;
  }

  public static void main(String[] args) throws Exception {
    String baseDir = env("WEIR_HDFS_BASEDIR", null);
    if (baseDir == null) {
      System.err.println("MiniDfs: WEIR_HDFS_BASEDIR is not set");
      System.exit(2);
    }
    int port = Integer.parseInt(env("WEIR_HDFS_PORT", "9000"));
    int httpPort = Integer.parseInt(env("WEIR_HDFS_HTTP_PORT", "0"));
    boolean format = Boolean.parseBoolean(env("WEIR_HDFS_FORMAT", "true"));

    Configuration conf = new HdfsConfiguration();
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, new File(baseDir).getAbsolutePath());
    conf.setInt(DFSConfigKeys.DFS_REPLICATION_KEY, 1);
    for (String arg : args) {
      int eq = arg.indexOf('=');
      if (eq <= 0) {
        System.err.println("MiniDfs: argument is not key=value: " + arg);
        System.exit(2);
      }
      conf.set(arg.substring(0, eq), arg.substring(eq + 1));
    }

    long t0 = System.nanoTime();
    final MiniDFSCluster cluster =
        new MiniDFSCluster.Builder(conf)
            .nameNodePort(port)
            .nameNodeHttpPort(httpPort)
            .numDataNodes(1)
            .format(format)
            .manageNameDfsDirs(true)
            .manageDataDfsDirs(true)
            .build();
    // SIGTERM/SIGINT wake the main thread, which shuts the cluster down outside the JVM's
    // shutdown phase: inside a shutdown hook the DataNode's shutdown fails ("Shutdown in
    // progress, cannot remove a shutdownHook") and the NameNode is never stopped.
    final CountDownLatch stop = new CountDownLatch(1);
    final String[] received = new String[1];
    for (String name : new String[] {"TERM", "INT"}) {
      Signal.handle(
          new Signal(name),
          sig -> {
            received[0] = sig.getName();
            stop.countDown();
          });
    }
    cluster.waitActive();
    cluster.waitClusterUp();

    System.err.printf(
        "MiniDfs: up in %d ms: hdfs://127.0.0.1:%d (web UI http://%s), base dir %s%n",
        (System.nanoTime() - t0) / 1_000_000,
        cluster.getNameNodePort(),
        cluster.getNameNode().getHttpAddress().getHostString()
            + ":"
            + cluster.getNameNode().getHttpAddress().getPort(),
        baseDir);
    System.out.println("Ready!");
    System.out.flush();
    stop.await();
    System.err.println("MiniDfs: SIG" + received[0] + " received, shutting down the cluster");
    long t1 = System.nanoTime();
    int code = 0;
    try {
      // Not cluster.shutdown(): that also registers the whole base dir for deletion at JVM
      // exit (FileUtil.fullyDeleteOnExit), which would defeat KEEP_DATA=1 restarts.
      cluster.shutdownDataNodes();
      cluster.shutdownNameNodes();
      System.err.printf("MiniDfs: cluster shut down in %d ms%n", (System.nanoTime() - t1) / 1_000_000);
    } catch (Throwable t) {
      System.err.println("MiniDfs: shutdown failed: " + t);
      t.printStackTrace();
      code = 1;
    }
    System.exit(code);
  }
}
