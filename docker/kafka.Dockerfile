# Apache Kafka broker (KRaft, one node) for the local cluster (cluster/manifests/kafka.yaml): the jars that
# kafka/pom.xml pins from Maven Central (`scripts/kafka.sh fetch` puts them in .cache/kafka/libs) and
# kafka/broker.sh, the same configuration the local stack runs. Not part of the chart: users bring their own
# Kafka (Strimzi, MSK, Confluent; helm/image-moderation/README.md).
# docker build -f docker/kafka.Dockerfile -t image-moderation/kafka:0.1.0 .   (after scripts/kafka.sh fetch)
# JRE_IMAGE is the published base; `scripts/images.sh build` without Docker passes a Debian-assembled stand-in.
ARG JRE_IMAGE=eclipse-temurin:17.0.13_11-jre-jammy

FROM ${JRE_IMAGE}
COPY .cache/kafka/libs/ /opt/kafka/libs/
COPY kafka/broker.sh kafka/log4j2.properties /opt/kafka/
# The data directory is a PersistentVolume; the generated server.properties goes to the /tmp emptyDir, so the
# root filesystem can be read-only.
ENV KAFKA_LIBS=/opt/kafka/libs \
    KAFKA_DATA_DIR=/var/lib/kafka/data \
    KAFKA_CONFIG_FILE=/tmp/server.properties \
    KAFKA_LOG4J=/opt/kafka/log4j2.properties
USER 1000:1000
EXPOSE 9092
ENTRYPOINT ["/opt/kafka/broker.sh", "run"]
