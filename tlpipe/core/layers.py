"""Where fine-tuning can start in each backbone: the layers `finetune.unfreeze_from` may name.

A layer qualifies when cutting just before it leaves at least the backbone's first layer with
weights frozen and no skip connection crossing the cut (what `backbone.boundary_layer` and
`backbone.split_at` check on the built model). Kept as a table so that params.py can check the
key for every stage without building a model: download stops on a misspelt layer name at once,
instead of `features` after a full download and resize. The names are those of keras.applications
in the pinned Keras; tests/test_backbones.py builds each backbone and compares (after a Keras
upgrade it prints the new table).
"""

from __future__ import annotations


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FINETUNE_STARTS: dict[str, tuple[str, ...]] = {
    "vgg16": _names(
        """
            block1_conv2 block1_pool block2_conv1 block2_conv2 block2_pool block3_conv1
            block3_conv2 block3_conv3 block3_pool block4_conv1 block4_conv2 block4_conv3
            block4_pool block5_conv1 block5_conv2 block5_conv3 block5_pool
        """
    ),
    "resnet50": _names(
        """
            conv1_bn conv1_relu pool1_pad pool1_pool conv2_block1_1_conv conv2_block1_out
            conv2_block2_1_conv conv2_block2_out conv2_block3_1_conv conv2_block3_out
            conv3_block1_1_conv conv3_block1_out conv3_block2_1_conv conv3_block2_out
            conv3_block3_1_conv conv3_block3_out conv3_block4_1_conv conv3_block4_out
            conv4_block1_1_conv conv4_block1_out conv4_block2_1_conv conv4_block2_out
            conv4_block3_1_conv conv4_block3_out conv4_block4_1_conv conv4_block4_out
            conv4_block5_1_conv conv4_block5_out conv4_block6_1_conv conv4_block6_out
            conv5_block1_1_conv conv5_block1_out conv5_block2_1_conv conv5_block2_out
            conv5_block3_1_conv conv5_block3_out
        """
    ),
    "efficientnetb0": _names(
        """
            stem_conv_pad stem_conv stem_bn stem_activation block1a_dwconv block1a_bn
            block1a_activation block1a_se_squeeze block1a_project_conv block1a_project_bn
            block2a_expand_conv block2a_expand_bn block2a_expand_activation block2a_dwconv_pad
            block2a_dwconv block2a_bn block2a_activation block2a_se_squeeze
            block2a_project_conv block2a_project_bn block2b_expand_conv block3a_expand_conv
            block3a_expand_bn block3a_expand_activation block3a_dwconv_pad block3a_dwconv
            block3a_bn block3a_activation block3a_se_squeeze block3a_project_conv
            block3a_project_bn block3b_expand_conv block4a_expand_conv block4a_expand_bn
            block4a_expand_activation block4a_dwconv_pad block4a_dwconv block4a_bn
            block4a_activation block4a_se_squeeze block4a_project_conv block4a_project_bn
            block4b_expand_conv block4c_expand_conv block5a_expand_conv block5a_expand_bn
            block5a_expand_activation block5a_dwconv block5a_bn block5a_activation
            block5a_se_squeeze block5a_project_conv block5a_project_bn block5b_expand_conv
            block5c_expand_conv block6a_expand_conv block6a_expand_bn block6a_expand_activation
            block6a_dwconv_pad block6a_dwconv block6a_bn block6a_activation block6a_se_squeeze
            block6a_project_conv block6a_project_bn block6b_expand_conv block6c_expand_conv
            block6d_expand_conv block7a_expand_conv block7a_expand_bn block7a_expand_activation
            block7a_dwconv block7a_bn block7a_activation block7a_se_squeeze
            block7a_project_conv block7a_project_bn top_conv top_bn top_activation
        """
    ),
    "densenet121": _names(
        """
            conv1_bn conv1_relu zero_padding2d_1 pool1 conv2_block1_0_bn conv2_block2_0_bn
            conv2_block3_0_bn conv2_block4_0_bn conv2_block5_0_bn conv2_block6_0_bn pool2_bn
            pool2_relu pool2_conv pool2_pool conv3_block1_0_bn conv3_block2_0_bn
            conv3_block3_0_bn conv3_block4_0_bn conv3_block5_0_bn conv3_block6_0_bn
            conv3_block7_0_bn conv3_block8_0_bn conv3_block9_0_bn conv3_block10_0_bn
            conv3_block11_0_bn conv3_block12_0_bn pool3_bn pool3_relu pool3_conv pool3_pool
            conv4_block1_0_bn conv4_block2_0_bn conv4_block3_0_bn conv4_block4_0_bn
            conv4_block5_0_bn conv4_block6_0_bn conv4_block7_0_bn conv4_block8_0_bn
            conv4_block9_0_bn conv4_block10_0_bn conv4_block11_0_bn conv4_block12_0_bn
            conv4_block13_0_bn conv4_block14_0_bn conv4_block15_0_bn conv4_block16_0_bn
            conv4_block17_0_bn conv4_block18_0_bn conv4_block19_0_bn conv4_block20_0_bn
            conv4_block21_0_bn conv4_block22_0_bn conv4_block23_0_bn conv4_block24_0_bn
            pool4_bn pool4_relu pool4_conv pool4_pool conv5_block1_0_bn conv5_block2_0_bn
            conv5_block3_0_bn conv5_block4_0_bn conv5_block5_0_bn conv5_block6_0_bn
            conv5_block7_0_bn conv5_block8_0_bn conv5_block9_0_bn conv5_block10_0_bn
            conv5_block11_0_bn conv5_block12_0_bn conv5_block13_0_bn conv5_block14_0_bn
            conv5_block15_0_bn conv5_block16_0_bn bn relu
        """
    ),
    "mobilenetv2": _names(
        """
            bn_Conv1 Conv1_relu expanded_conv_depthwise expanded_conv_depthwise_BN
            expanded_conv_depthwise_relu expanded_conv_project expanded_conv_project_BN
            block_1_expand block_1_expand_BN block_1_expand_relu block_1_pad block_1_depthwise
            block_1_depthwise_BN block_1_depthwise_relu block_1_project block_1_project_BN
            block_2_expand block_3_expand block_3_expand_BN block_3_expand_relu block_3_pad
            block_3_depthwise block_3_depthwise_BN block_3_depthwise_relu block_3_project
            block_3_project_BN block_4_expand block_5_expand block_6_expand block_6_expand_BN
            block_6_expand_relu block_6_pad block_6_depthwise block_6_depthwise_BN
            block_6_depthwise_relu block_6_project block_6_project_BN block_7_expand
            block_8_expand block_9_expand block_10_expand block_10_expand_BN
            block_10_expand_relu block_10_depthwise block_10_depthwise_BN
            block_10_depthwise_relu block_10_project block_10_project_BN block_11_expand
            block_12_expand block_13_expand block_13_expand_BN block_13_expand_relu
            block_13_pad block_13_depthwise block_13_depthwise_BN block_13_depthwise_relu
            block_13_project block_13_project_BN block_14_expand block_15_expand
            block_16_expand block_16_expand_BN block_16_expand_relu block_16_depthwise
            block_16_depthwise_BN block_16_depthwise_relu block_16_project block_16_project_BN
            Conv_1 Conv_1_bn out_relu
        """
    ),
}
