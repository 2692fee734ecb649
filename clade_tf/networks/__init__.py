from clade_tf.networks.discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from clade_tf.networks.encoder import ConvEncoder
from clade_tf.networks.generator import Generator

__all__ = ["ConvEncoder", "Generator", "MultiscaleDiscriminator", "NLayerDiscriminator"]
